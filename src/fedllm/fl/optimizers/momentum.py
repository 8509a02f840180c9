"""Server momentum (FedAvgM, Hsu et al. 2019), damping client drift across rounds.

The momentum is stored as u = −v (the ascent direction Δ), so both semantics keep the same sign:
paper u ← β1·u + Δ, w ← w + η_s·u (i.e. v ← β1·v − Δ, w ← w − η_s·v), u₀ = 0;
openfedllm u ← β1·u + (1 − β1)·Δ (u = Δ in the first round), w ← w + u (no server lr).
"""

from __future__ import annotations

from fedllm.fl import state as S
from fedllm.fl.base import ServerOptimizer
from fedllm.fl.registries import SERVER_OPTIMIZERS
from fedllm.fl.state import State


@SERVER_OPTIMIZERS.register("momentum")
class ServerMomentum(ServerOptimizer):
    """Momentum β1 = params.beta1 on the aggregated delta."""

    reads = ("server_lr", "beta1")
    states = ("momentum",)
    momentum: State | None

    def used_params(self) -> set[str]:
        return {"beta1"} if self.params.compat == "openfedllm" else set(self.reads)

    def step(self, w: State, delta: State, rounds_done: int) -> State:
        beta = self.params.beta1
        if self.params.compat == "openfedllm":
            lr = 1.0
            if rounds_done == 0 or self.momentum is None:
                u = delta
            else:
                u = {k: beta * self.momentum[k] + (1 - beta) * delta[k] for k in delta}
        else:
            lr = self.lr
            prev = self.momentum if self.momentum is not None else S.zeros_like(delta)
            u = {k: beta * prev[k] + delta[k] for k in delta}
        self.momentum = u
        return {k: w[k] + lr * u[k] for k in w}
