"""FedYogi (Reddi et al. 2021): additive, sign-controlled v update that grows more cautiously than Adam's."""

from __future__ import annotations

import torch
from torch import Tensor

from fedllm.fl.base import register_algorithm
from fedllm.fl.fedopt import FedOpt


@register_algorithm("fedyogi")
class FedYogi(FedOpt):
    """v ← v − (1 − β2)·Δ²·sign(v − Δ²)."""

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        return v - (1 - self.params.beta2) * sq * torch.sign(v - sq)
