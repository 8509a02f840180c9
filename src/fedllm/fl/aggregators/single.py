"""The Local baseline's aggregation: the one client's Δ itself (no weighting, so 0 samples is fine)."""

from __future__ import annotations

from fedllm.fl.base import Aggregator
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State


@AGGREGATORS.register("single")
class Single(Aggregator):
    uses_weights = False

    def check_count(self, n: int) -> None:
        if n != 1:
            raise ValueError(f"local trains exactly one client per round, got {n} updates")

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        self.check_count(len(deltas))
        return deltas[0]
