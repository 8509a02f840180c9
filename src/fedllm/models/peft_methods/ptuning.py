"""P-tuning (Liu et al. 2021): virtual-token embeddings produced by a small MLP from trainable inputs."""

from __future__ import annotations

from typing import Any

from fedllm.models.peft_methods.base import register_peft_method
from fedllm.models.peft_methods.prompt import PromptLearning


@register_peft_method("ptuning")
class PTuning(PromptLearning):
    """The MLP (width ``peft.encoder_hidden_size``, default the model's hidden size) is trained and sent with
    its inputs; peft saves its output, so the run also keeps the trainable form for evaluation."""

    reparametrized = True

    def peft_config(self, model: Any, layers: list[int] | None = None) -> Any:
        from peft import PromptEncoderConfig

        p = self.cfg.peft
        return PromptEncoderConfig(num_virtual_tokens=p.num_virtual_tokens, encoder_reparameterization_type="MLP",
                                   encoder_hidden_size=p.encoder_hidden_size or model.config.hidden_size,
                                   task_type="CAUSAL_LM")
