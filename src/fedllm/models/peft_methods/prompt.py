"""Prompt tuning (Lester et al. 2021): n trainable input embeddings in front of every input."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedllm.models.peft_methods.base import PeftMethod, kaiming_linear, register_peft_method


class PromptLearning(PeftMethod):
    """Methods that add virtual tokens (the loss must run ``PeftModel.forward``, which adds them)."""

    inside_layers = False

    def problem(self, model: Any, layers: list[int] | None = None) -> str | None:
        if layers is not None:
            return f"peft.method={self.name} adds virtual tokens to the input; it cannot be limited to some layers"
        return None

    def initial(self, key: str, current: Tensor, model: Any, generator: torch.Generator) -> Tensor | None:
        if key.endswith("embedding.weight"):
            return self.embedding_init(current, model, generator)
        if key.endswith("bias"):
            return torch.zeros(current.shape, dtype=torch.float32)
        return kaiming_linear(current, generator)

    def embedding_init(self, current: Tensor, model: Any, generator: torch.Generator) -> Tensor:
        """Token-sized virtual embeddings start as the embeddings of random vocabulary tokens (peft's
        SAMPLE_VOCAB; ``peft.prompt_init=random`` draws N(0, 1) as nn.Embedding does)."""
        words = model.get_input_embeddings().weight
        if self.cfg.peft.prompt_init == "vocab" and current.shape[-1] == words.shape[-1]:
            ids = torch.randint(0, words.shape[0], (current.shape[0],), generator=generator)
            return words.detach()[ids].to("cpu", torch.float32).clone()
        return torch.randn(current.shape, generator=generator, dtype=torch.float32)


@register_peft_method("prompt")
class PromptTuning(PromptLearning):
    """``peft.num_virtual_tokens`` trainable embeddings prepended to the input embeddings."""

    def peft_config(self, model: Any, layers: list[int] | None = None) -> Any:
        from peft import PromptTuningConfig

        return PromptTuningConfig(num_virtual_tokens=self.cfg.peft.num_virtual_tokens, task_type="CAUSAL_LM")
