"""Coordinate-wise β-trimmed mean (Yin et al. 2018, "Byzantine-robust distributed learning: towards
optimal statistical rates"): per coordinate, drop the k = ⌊β·n⌋ largest and the k smallest client
values and average the n − 2k left, so up to k outliers on either side have no effect at all.

Computed in float64 and cast back to each tensor's dtype. Robust aggregators ignore the sample
weights: a client can claim any sample count, so weighting by it would hand an attacker the influence
the aggregator is meant to deny.
"""

from __future__ import annotations

import math
from functools import partial

from pydantic import Field
from torch import Tensor

from fedllm.fl.aggregators.median import coordinatewise
from fedllm.fl.base import Aggregator, Options
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State

#: absorbs float error in β·n (0.29·100 = 28.999999999999996 must trim 29, not 28).
_EPS = 1e-9


class TrimmedMeanOptions(Options):
    trim_ratio: float = Field(0.2, ge=0, lt=0.5,
                              description="β: the fraction of values dropped at each end, per coordinate")


def trim_count(n: int, trim_ratio: float) -> int:
    """k = ⌊β·n⌋ values dropped at each end; ValueError if fewer than one value would remain."""
    k = math.floor(trim_ratio * n + _EPS)
    if n - 2 * k < 1:
        raise ValueError(f"trimmed_mean with trim_ratio={trim_ratio} drops k={k} values at each end of n={n} "
                         f"updates, leaving {n - 2 * k}; lower trim_ratio below 0.5")
    return k


def sorted_trimmed_mean(values: Tensor, k: int) -> Tensor:
    """Mean along dim 0 of values already sorted along it, without the k lowest and k highest rows."""
    return values[k:values.shape[0] - k].mean(dim=0)


@AGGREGATORS.register("trimmed_mean")
class TrimmedMean(Aggregator):
    """Δ[j] = mean of Δ_i[j] without its k smallest and k largest values; the weights are ignored."""

    Options = TrimmedMeanOptions
    options: TrimmedMeanOptions
    uses_weights = False

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        k = trim_count(len(deltas), self.options.trim_ratio)
        return coordinatewise(deltas, partial(sorted_trimmed_mean, k=k))
