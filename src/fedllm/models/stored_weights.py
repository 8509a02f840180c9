"""Frozen matmul weights stored in the autocast dtype, for decoding.

Under bf16 autocast every ``F.linear`` casts its fp32 weight to bf16 again, and autocast caches
those casts only for weights that require grad: a frozen base model is re-cast at every decoding
step, which made bf16 decoding slower than fp32 on a CPU (0.73× at batch 1 on a Zen 5). Casting is
deterministic, so storing the frozen linear weights in bf16 once gives autocast the very tensors it
would have made: the same matmuls, the same answers, without the per-step casts. Embeddings and
norms stay as they are (autocast does not cast them); a head tied to the embeddings gets its own
bf16 copy; adapters stay fp32, as autocast casts them per call as before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def store_frozen_linears(model: Any, dtype: torch.dtype) -> int:
    """Store every frozen ``nn.Linear`` weight (and bias) of ``model`` in ``dtype``; returns how many
    layers changed. Only for inference under autocast to ``dtype``: training keeps fp32 masters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings()
    head = base.get_output_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:  # tied: the head gets its own copy
        head.weight = nn.Parameter(emb.weight.detach().to(dtype), requires_grad=False)
    changed = 0
    with torch.no_grad():
        for module in base.modules():
            if type(module) is not nn.Linear or module.weight.requires_grad or module.weight.dtype == dtype:
                continue
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
            if module.bias is not None:
                module.bias = nn.Parameter(module.bias.detach().to(dtype), requires_grad=False)
            changed += 1
    return changed


def store_for_inference(model: Any, precision: Any, peft_method: str | None) -> int:
    """Before evaluating under ``precision``: frozen weights stored in bf16 when it is bf16 autocast (the
    answers are those of autocast over fp32 weights). Not for DoRA, whose weight norm reads the base
    weight outside autocast's casts. Returns how many layers changed."""
    if precision.name != "bf16" or peft_method == "dora":
        return 0
    return store_frozen_linears(model, torch.bfloat16)
