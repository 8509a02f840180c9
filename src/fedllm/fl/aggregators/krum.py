"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine learning with adversaries: Byzantine tolerant
gradient descent"): score each update by the summed squared L2 distances (all tensors together) to its
n − f − 2 nearest other updates; Krum keeps the update with the lowest score, Multi-Krum averages the
m lowest-scored ones. An update far from the honest cluster scores high and is never chosen, as long
as n > 2f + 2 (at most f Byzantine clients).

Ties go to the lower index, so the choice is deterministic. Robust aggregators ignore the sample
weights: a client can claim any sample count, so weighting by it would hand an attacker the influence
the aggregator is meant to deny (Multi-Krum averages its selection uniformly).
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from fedllm.fl import state as S
from fedllm.fl.aggregators.median import stacked
from fedllm.fl.base import Aggregator, Options
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State


class KrumOptions(Options):
    byzantine: int = Field(1, ge=0, description="f: the number of Byzantine clients tolerated per round")


class MultiKrumOptions(KrumOptions):
    select: Optional[int] = Field(None, ge=1, description="m: how many lowest-scored updates to average; null: n − f")


def check_krum_condition(n: int, f: int) -> None:
    """Krum's condition n > 2f + 2; ValueError naming n, f and the fix otherwise."""
    if n <= 2 * f + 2:
        fix = f"lower byzantine to at most {(n - 3) // 2} or " if n >= 3 else ""
        raise ValueError(f"krum needs n > 2f + 2 updates, got n={n} with f={f} (byzantine); {fix}"
                         f"sample at least {2 * f + 3} clients per round")


def squared_distances(deltas: list[State]) -> torch.Tensor:
    """(n, n) float64 matrix of ‖Δ_i − Δ_j‖² over all tensors together."""
    n = len(deltas)
    dist = torch.zeros(n, n, dtype=torch.float64)
    for _, _, values in stacked(deltas):
        for i in range(n):
            dist[i] += ((values - values[i]) ** 2).sum(dim=1).cpu()
    return dist


def krum_scores(deltas: list[State], byzantine: int) -> list[float]:
    """Score_i = Σ of the n − f − 2 smallest ‖Δ_i − Δ_j‖² over j ≠ i."""
    n = len(deltas)
    check_krum_condition(n, byzantine)
    dist = squared_distances(deltas)
    neighbours = n - byzantine - 2
    scores = []
    for i in range(n):
        others = torch.cat([dist[i, :i], dist[i, i + 1:]])
        scores.append(float(others.sort().values[:neighbours].sum()))
    return scores


def krum_select(deltas: list[State], byzantine: int, m: int) -> list[int]:
    """Indices of the m lowest-scored updates, lowest first; ties go to the lower index."""
    scores = krum_scores(deltas, byzantine)
    return sorted(range(len(deltas)), key=lambda i: (scores[i], i))[:m]


@AGGREGATORS.register("krum")
class Krum(Aggregator):
    """Δ = the update with the lowest Krum score (a copy); the weights are ignored."""

    Options = KrumOptions
    options: KrumOptions
    uses_weights = False

    def check_count(self, n: int) -> None:
        check_krum_condition(n, self.options.byzantine)

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        (best,) = krum_select(deltas, self.options.byzantine, 1)
        return S.clone(deltas[best])


@AGGREGATORS.register("multikrum")
class MultiKrum(Aggregator):
    """Δ = the uniform mean of the m lowest-scored updates (m = n − f by default); the weights are ignored."""

    Options = MultiKrumOptions
    options: MultiKrumOptions
    uses_weights = False

    def check_count(self, n: int) -> None:
        check_krum_condition(n, self.options.byzantine)
        self._selected(n)

    def _selected(self, n: int) -> int:
        f = self.options.byzantine
        m = self.options.select if self.options.select is not None else n - f
        if m > n - f:
            raise ValueError(f"multikrum select={m} exceeds n − f = {n} − {f} = {n - f}: it would average "
                             f"updates Krum counts as possibly Byzantine; lower select or byzantine")
        return m

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        m = self._selected(len(deltas))
        chosen = krum_select(deltas, self.options.byzantine, m)
        return S.weighted_sum([deltas[i] for i in chosen], [1.0 / m] * m)
