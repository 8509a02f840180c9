"""Weighted mean Δ = Σ p_i Δ_i (FedAvg's aggregation), accumulated in float64."""

from __future__ import annotations

from fedllm.fl import state as S
from fedllm.fl.base import Aggregator
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State


@AGGREGATORS.register("mean")
class Mean(Aggregator):
    """p_i from fl.weighting (held samples by default)."""

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        return S.weighted_sum(deltas, weights)
