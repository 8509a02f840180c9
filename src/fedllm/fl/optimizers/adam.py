"""Server Adam (FedAdam, Reddi et al. 2021): v an exponential average of squared pseudo-gradients."""

from __future__ import annotations

from torch import Tensor

from fedllm.fl.registries import SERVER_OPTIMIZERS
from fedllm.fl.optimizers.adaptive import AdaptiveOptimizer


@SERVER_OPTIMIZERS.register("adam")
class ServerAdam(AdaptiveOptimizer):
    """v ← β2·v + (1 − β2)·Δ²."""

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        b2 = self.params.beta2
        return b2 * v + (1 - b2) * sq
