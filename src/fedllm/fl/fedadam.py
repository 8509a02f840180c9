"""FedAdam (Reddi et al. 2021): Adam on the server, v an exponential average of squared pseudo-gradients."""

from __future__ import annotations

from torch import Tensor

from fedllm.fl.base import register_algorithm
from fedllm.fl.fedopt import FedOpt


@register_algorithm("fedadam")
class FedAdam(FedOpt):
    """v ← β2·v + (1 − β2)·Δ²."""

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        b2 = self.params.beta2
        return b2 * v + (1 - b2) * sq
