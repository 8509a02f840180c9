"""Prefix tuning (Li & Liang 2021): trainable keys and values of n virtual positions in every layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedllm.models.peft_methods.base import register_peft_method
from fedllm.models.peft_methods.prompt import PromptLearning


@register_peft_method("prefix")
class PrefixTuning(PromptLearning):
    """The keys and values start as those of n random vocabulary tokens (Li & Liang's initialisation from
    real words: the model first behaves as if those tokens preceded every input); ``peft.prompt_init=random``
    draws N(0, 1) as peft does. ``peft.prefix_projection`` produces them with an MLP (width
    ``peft.encoder_hidden_size``) from embeddings that start like prompt tuning's."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.reparametrized = bool(cfg.peft.prefix_projection)

    def peft_config(self, model: Any, layers: list[int] | None = None) -> Any:
        from peft import PrefixTuningConfig

        p = self.cfg.peft
        return PrefixTuningConfig(num_virtual_tokens=p.num_virtual_tokens, prefix_projection=p.prefix_projection,
                                  encoder_hidden_size=p.encoder_hidden_size or model.config.hidden_size,
                                  task_type="CAUSAL_LM")

    def embedding_init(self, current: Tensor, model: Any, generator: torch.Generator) -> Tensor:
        words = model.get_input_embeddings().weight
        if self.cfg.peft.prompt_init != "vocab" or self.reparametrized:  # the MLP's inputs: as prompt tuning's
            return super().embedding_init(current, model, generator)
        ids = torch.randint(0, words.shape[0], (1, current.shape[0]), generator=generator)
        with torch.no_grad():
            cache = model.get_base_model()(input_ids=ids.to(words.device), use_cache=True).past_key_values
        # peft reads row t as (layer, key|value, head, dim) blocks: [k_0 | v_0 | k_1 | v_1 | ...]
        blocks = []
        for layer in cache.layers:
            for part in (layer.keys, layer.values):  # (1, heads, n, head_dim)
                blocks.append(part[0].permute(1, 0, 2).reshape(current.shape[0], -1))
        out = torch.cat(blocks, dim=1).to("cpu", torch.float32)
        if out.shape != current.shape:
            raise ValueError(f"prefix keys and values of shape {tuple(out.shape)} do not fit peft's {tuple(current.shape)}")
        return out
