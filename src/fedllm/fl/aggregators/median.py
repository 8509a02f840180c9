"""Coordinate-wise median (Yin et al. 2018, "Byzantine-robust distributed learning: towards optimal
statistical rates"): each coordinate of Δ is the median of the clients' values there, so a minority of
arbitrary (Byzantine) updates cannot drag it outside the range of the honest ones.

For an even count the median is the mean of the two middle values. Computed in float64 and cast back
to each tensor's dtype. Robust aggregators ignore the sample weights: a client can claim any sample
count, so weighting by it would hand an attacker the influence the aggregator is meant to deny.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from fedllm.fl.base import Aggregator
from fedllm.fl.registries import AGGREGATORS
from fedllm.fl.state import State


def stacked(deltas: list[State]) -> Iterator[tuple[str, Tensor, Tensor]]:
    """Per adapter key: (key, the first delta's tensor, the n deltas' values as an (n, numel) float64
    matrix). The deltas are read, never modified; ValueError/KeyError on no deltas or differing keys."""
    if not deltas:
        raise ValueError("cannot aggregate zero client updates")
    ref = deltas[0]
    for i, d in enumerate(deltas[1:], start=1):
        if d.keys() != ref.keys():
            missing, extra = sorted(ref.keys() - d.keys()), sorted(d.keys() - ref.keys())
            raise KeyError(f"update {i} differs in keys from update 0: missing {missing[:3]}, extra {extra[:3]}")
    for k, t in ref.items():
        yield k, t, torch.stack([d[k].detach().reshape(-1).to(torch.float64) for d in deltas])


def coordinatewise(deltas: list[State], reduce: Callable[[Tensor], Tensor]) -> State:
    """Apply ``reduce`` to each key's values sorted along the client axis ((n, numel) → (numel,)),
    then reshape and cast back to the key's dtype."""
    return {k: reduce(values.sort(dim=0).values).reshape(ref.shape).to(ref.dtype)
            for k, ref, values in stacked(deltas)}


def sorted_median(values: Tensor) -> Tensor:
    """Median along dim 0 of values already sorted along it; mean of the two middle ones for even n."""
    n = values.shape[0]
    return (values[(n - 1) // 2] + values[n // 2]) / 2


@AGGREGATORS.register("median")
class Median(Aggregator):
    """Δ[j] = median_i Δ_i[j]; the weights are ignored."""

    uses_weights = False

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        return coordinatewise(deltas, sorted_median)
