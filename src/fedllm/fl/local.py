"""Local baseline: one client trains alone and its result becomes the "global" adapter (w + Δ)."""

from __future__ import annotations

from fedllm.fl import state as S
from fedllm.fl.base import Algorithm, ClientUpdate, register_algorithm
from fedllm.fl.state import State


@register_algorithm("local")
class Local(Algorithm):
    """w ← w + Δ of the single client; weights and server_lr play no part (same in both compat modes)."""

    single_client = True

    def mean_delta(self, updates: list[ClientUpdate]) -> State:
        """The one client's Δ (no weighting, so a client that saw 0 samples is fine)."""
        if len(updates) != 1:
            raise ValueError(f"local trains exactly one client per round, got {len(updates)} updates")
        return updates[0].delta

    def server_update(self, global_state: State, delta: State, updates: list[ClientUpdate]) -> State:
        """w + Δ."""
        return S.add(global_state, delta)
