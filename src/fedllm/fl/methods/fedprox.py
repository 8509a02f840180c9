"""FedProx (Li et al. 2020): clients add μ/2·Σ‖θ − w‖² to pull toward the global w; FedAvg server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.base import ClientHooks, ClientMethod
from fedllm.fl.registries import CLIENT_METHODS
from fedllm.fl.state import State


class FedProxHooks(ClientHooks):
    """Adds the proximal term over the trainable parameters (identical in both compat modes)."""

    def __init__(self, global_state: State, mu: float) -> None:
        self.mu = mu
        self.anchor = S.clone(global_state)  # detached copy of w
        self._anchor_on: State | None = None  # w on the params' device/dtype, made at the first call

    def loss_term(self, params: Mapping[str, Tensor]) -> Tensor | None:
        """μ/2·Σ_k ‖θ_k − w_k‖²; gradient μ(θ − w)."""
        live = {k: p for k, p in params.items() if p.requires_grad}
        if not live:
            return None
        if self._anchor_on is None:
            self._anchor_on = S.match(self.anchor, params)
        total = sum((p - self._anchor_on[k]).square().sum() for k, p in live.items())
        return self.mu / 2 * total


@CLIENT_METHODS.register("fedprox")
class FedProx(ClientMethod):
    """Proximal weight μ = params.mu, sent to clients in the instruction."""

    reads = ("mu",)

    def client_options(self) -> dict[str, Any]:
        return {"mu": self.params.mu}

    @classmethod
    def hooks(cls, options: Mapping[str, Any], global_state: State, payload: Mapping[str, State],
              client_state: State | None) -> ClientHooks:
        return FedProxHooks(global_state, float(options["mu"]))
