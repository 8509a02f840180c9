"""LoRA (Hu et al. 2022) and DoRA (Liu et al. 2024): low-rank updates inside the target linear layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedllm.fl.state import is_lora_a
from fedllm.models.peft_methods.base import PeftMethod, kaiming_linear, missing_modules, register_peft_method


@register_peft_method("lora")
class LoRA(PeftMethod):
    """ΔW = (α/r)·B·A on ``lora.target_modules``; A ~ kaiming-uniform(a=√5) from the run's seed, B = 0."""

    dora: bool = False

    def peft_config(self, model: Any, layers: list[int] | None = None) -> Any:
        from peft import LoraConfig

        lora = self.cfg.lora
        return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), task_type="CAUSAL_LM", use_dora=self.dora,
                          layers_to_transform=list(layers) if layers is not None else None)

    def problem(self, model: Any, layers: list[int] | None = None) -> str | None:
        return missing_modules(model, self.cfg.lora.target_modules, "lora.target_modules")

    def initial(self, key: str, current: Tensor, model: Any, generator: torch.Generator) -> Tensor | None:
        if not is_lora_a(key):
            return None  # B = 0 (and DoRA's magnitudes, the column norms of W) as peft set them
        return kaiming_linear(current, generator)


@register_peft_method("dora")
class DoRA(LoRA):
    """Weight-decomposed LoRA: W' = m·(W + ΔW)/‖W + ΔW‖, with the magnitudes m trained too (``lora.*``
    settings as LoRA's)."""

    dora = True
