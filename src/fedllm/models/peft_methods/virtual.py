"""Prompt-learning methods (prompt tuning, P-tuning, prefix tuning) act through virtual tokens that
``PeftModel.forward`` adds in front of the input; these helpers run a forward pass or start a cached
decoding loop the same way, and say when there are no virtual tokens (other methods, or adapter disabled)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def virtual_tokens(model: Any) -> int:
    """How many virtual tokens the model's forward adds in front of the input (0 if none are active)."""
    cfg = getattr(model, "active_peft_config", None)
    if cfg is None or not getattr(cfg, "is_prompt_learning", False) or getattr(model, "_adapters_disabled", False):
        return 0
    return int(cfg.num_virtual_tokens)


def input_logits(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None, last_only: bool = False) -> Tensor:
    """Logits at the input's own positions (a prompt-tuned model also returns its virtual tokens');
    ``last_only``: at the last position only, so the LM head skips every other one."""
    kw: dict[str, Any] = {"attention_mask": attention_mask} if attention_mask is not None else {}
    if last_only:
        return model(input_ids=input_ids, logits_to_keep=1, **kw).logits
    logits = model(input_ids=input_ids, **kw).logits
    return logits[:, -input_ids.shape[1]:] if virtual_tokens(model) else logits


def decoding_start(model: Any, ids: Tensor, mask: Tensor, positions: Tensor) -> tuple[Any, dict[str, Any], Tensor]:
    """(what to call for every decoding step, the first step's arguments, the attention mask with the
    virtual tokens in front): peft's own forward would add the virtual tokens again at every cached step,
    so decoding runs the base model with them added once, at the positions training gave them."""
    n = virtual_tokens(model)
    if not n:
        return model, {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, mask
    from peft import PeftType

    batch = ids.shape[0]
    base = model.get_base_model()
    full = torch.cat([torch.ones((batch, n), dtype=mask.dtype, device=mask.device), mask], dim=1)
    prompt = model.get_prompt(batch_size=batch)
    if model.active_peft_config.peft_type == PeftType.PREFIX_TUNING:  # keys and values of n earlier positions
        return base, {"input_ids": ids, "attention_mask": full, "position_ids": positions + n,
                      "past_key_values": prompt}, full
    embeds = base.get_input_embeddings()(ids)
    embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
    first = torch.arange(n, device=ids.device).expand(batch, n)
    return base, {"inputs_embeds": embeds, "attention_mask": full,
                  "position_ids": torch.cat([first, positions + n], dim=1)}, full
