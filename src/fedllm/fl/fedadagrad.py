"""FedAdagrad (Reddi et al. 2021): no momentum (β1 = 0), v accumulates squared pseudo-gradients."""

from __future__ import annotations

from torch import Tensor

from fedllm.fl.base import register_algorithm
from fedllm.fl.fedopt import FedOpt


@register_algorithm("fedadagrad")
class FedAdagrad(FedOpt):
    """v ← v + Δ²; bias correction does not apply."""

    uses_momentum = False
    bias_correctable = False

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        return v + sq
