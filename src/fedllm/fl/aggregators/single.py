"""The Local baseline's aggregation: the one client's Δ itself (no weighting, so 0 samples is fine)."""

from __future__ import annotations

from fedllm.fl.base import Aggregator
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State


@AGGREGATORS.register("single")
class Single(Aggregator):
    uses_weights = False

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        if len(deltas) != 1:
            raise ValueError(f"local trains exactly one client per round, got {len(deltas)} updates")
        return deltas[0]
