"""The PEFT-method API: how a method wraps the base model through ``peft``, how its trainable state
starts (seeded), and whether the decoder-plus-head loss shortcut is exact for it. A new method is one
module with one ``@register_peft_method`` class; look methods up through ``fedllm.models.peft_methods``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fedllm.registry import Registry


class PeftMethod:
    """One PEFT method. ``cfg`` is the run's configuration (its ``peft`` and ``lora`` sections)."""

    name: ClassVar[str] = ""
    #: the adapter sits inside the decoder's linear layers (LoRA, DoRA, IA³), so the loss can run the
    #: decoder and the LM head on labelled positions only, exactly as the model's own forward would
    inside_layers: ClassVar[bool] = True
    #: peft saves a computed form of the weights (P-tuning's MLP output), not the trainable parameters
    reparametrized: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def peft_config(self, model: Any, layers: list[int] | None = None) -> Any:
        """The ``peft`` config that wraps ``model`` (``layers``: restrict to these decoder layers)."""
        raise NotImplementedError

    def problem(self, model: Any, layers: list[int] | None = None) -> str | None:
        """Why this method cannot wrap ``model`` (one line), or None."""
        return None

    def initial(self, key: str, current: Tensor, model: Any, generator: torch.Generator) -> Tensor | None:
        """The seeded initial value of trainable tensor ``key`` (None: keep the value peft gave it at
        attach time, which is deterministic, e.g. LoRA's B = 0 or IA³'s ones)."""
        return None


PEFT_METHODS: Registry[type[PeftMethod]] = Registry("PEFT method")
"""PEFT method name -> class (filled by @register_peft_method at import time)."""


def register_peft_method(name: str) -> Callable[[type[PeftMethod]], type[PeftMethod]]:
    return PEFT_METHODS.register(name)


def module_names(model: Any) -> set[str]:
    """The last name component of every module (what peft's ``target_modules`` match)."""
    return {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}


def missing_modules(model: Any, wanted: list[str], key: str) -> str | None:
    """One line naming ``wanted`` modules the model lacks, with the linear layers it has."""
    unknown = [t for t in wanted if t not in module_names(model)]
    if not unknown:
        return None
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    return f"{key} {unknown} not found in the model; its linear layers are {linear}"


def kaiming_linear(current: Tensor, generator: torch.Generator) -> Tensor:
    """nn.Linear's default weight initialisation (kaiming-uniform, a=√5), seeded."""
    t = torch.empty(current.shape, dtype=torch.float32)
    return nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
