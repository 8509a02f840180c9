"""Server Yogi (FedYogi, Reddi et al. 2021): additive, sign-controlled v that grows more cautiously than Adam's."""

from __future__ import annotations

import torch
from torch import Tensor

from fedllm.fl.registries import SERVER_OPTIMIZERS
from fedllm.fl.optimizers.adaptive import AdaptiveOptimizer


@SERVER_OPTIMIZERS.register("yogi")
class ServerYogi(AdaptiveOptimizer):
    """v ← v − (1 − β2)·Δ²·sign(v − Δ²)."""

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        return v - (1 - self.params.beta2) * sq * torch.sign(v - sq)
