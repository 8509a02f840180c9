"""Server Adagrad (FedAdagrad, Reddi et al. 2021): no momentum (β1 = 0), v accumulates Δ²."""

from __future__ import annotations

from torch import Tensor

from fedllm.fl.registries import SERVER_OPTIMIZERS
from fedllm.fl.optimizers.adaptive import AdaptiveOptimizer


@SERVER_OPTIMIZERS.register("adagrad")
class ServerAdagrad(AdaptiveOptimizer):
    """v ← v + Δ²; bias correction does not apply."""

    reads = ("server_lr", "tau", "v0")
    uses_momentum = False
    bias_correctable = False

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        return v + sq
