"""Norm-bounded mean (Sun et al. 2019, "Can you really backdoor federated learning?"): each client
delta is scaled down to L2 norm at most C (all tensors together), then the deltas are averaged with
the usual weights, so one client moves Δ by at most p_i·C however large its update.

Unlike the other robust aggregators this one keeps the sample weights (as in the paper): a client can
claim any sample count, so for a hard per-client bound combine it with ``fl.weighting: uniform``.
"""

from __future__ import annotations

from pydantic import Field

from fedllm.fl import state as S
from fedllm.fl.base import Aggregator, Options
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State
from fedllm.fl.transforms.clip import clip_to_norm


class NormBoundedOptions(Options):
    max_norm: float = Field(..., gt=0,
                            description="C: the L2 bound on each client delta (all adapter tensors together)")


@AGGREGATORS.register("norm_bounded_mean")
class NormBoundedMean(Aggregator):
    """Δ = Σ p_i · Δ_i·min(1, C/‖Δ_i‖)."""

    Options = NormBoundedOptions
    options: NormBoundedOptions
    uses_weights = True

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        return S.weighted_sum([clip_to_norm(d, self.options.max_norm) for d in deltas], weights)
