"""FedAvgM (Hsu et al. 2019): FedAvg with server momentum, damping client drift across rounds.

The momentum is stored as u = −v (the ascent direction Δ), so both modes keep the same sign:
paper u ← β1·u + Δ, w ← w + η_s·u (i.e. v ← β1·v − Δ, w ← w − η_s·v), u₀ = 0;
openfedllm u ← β1·u + (1 − β1)·Δ (u = Δ in the first round), w ← w + u (no server lr).
"""

from __future__ import annotations

from fedllm.fl import state as S
from fedllm.fl.base import ClientUpdate, register_algorithm
from fedllm.fl.fedavg import FedAvg
from fedllm.fl.state import State


@register_algorithm("fedavgm")
class FedAvgM(FedAvg):
    """Server momentum β1 = params.beta1 on the weighted mean delta."""

    server_states = ("momentum",)
    momentum: State | None

    def server_update(self, global_state: State, delta: State, updates: list[ClientUpdate]) -> State:
        """Update the momentum, then step the global adapter along it."""
        beta = self.params.beta1
        if self.params.compat == "openfedllm":
            lr = 1.0
            if self.rounds_done == 0 or self.momentum is None:
                u = delta
            else:
                u = {k: beta * self.momentum[k] + (1 - beta) * delta[k] for k in delta}
        else:
            lr = self.server_lr
            prev = self.momentum if self.momentum is not None else S.zeros_like(delta)
            u = {k: beta * prev[k] + delta[k] for k in delta}
        self.momentum = u
        return {k: global_state[k] + lr * u[k] for k in global_state}
