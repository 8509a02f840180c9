"""Server SGD (FedAvg's server step): w ← w + η_s·Δ; η_s = 1 is plain averaging."""

from __future__ import annotations

from fedllm.fl.base import ServerOptimizer
from fedllm.fl.registries import SERVER_OPTIMIZERS
from fedllm.fl.state import State


@SERVER_OPTIMIZERS.register("sgd")
class ServerSGD(ServerOptimizer):
    reads = ("server_lr",)

    def step(self, w: State, delta: State, rounds_done: int) -> State:
        return {k: w[k] + self.lr * delta[k] for k in w}
