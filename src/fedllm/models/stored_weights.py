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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

_Replaced = list[tuple[nn.Module, str, nn.Parameter]]  # (module, attribute, the parameter it held before)


def _store(model: Any, dtype: torch.dtype) -> _Replaced:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings()
    head = base.get_output_embeddings()
    replaced: _Replaced = []

    def replace(module: nn.Module, name: str) -> None:
        old = getattr(module, name)
        replaced.append((module, name, old))
        setattr(module, name, nn.Parameter(old.detach().to(dtype), requires_grad=False))

    with torch.no_grad():
        if head is not None and emb is not None and head.weight is emb.weight:  # tied: the head gets its own copy
            replace(head, "weight")
        for module in base.modules():
            if type(module) is not nn.Linear or module.weight.requires_grad or module.weight.dtype == dtype:
                continue
            replace(module, "weight")
            if module.bias is not None:
                replace(module, "bias")
    return replaced


def _weights(replaced: _Replaced) -> int:
    return sum(name == "weight" for _, name, _ in replaced)


def store_frozen_linears(model: Any, dtype: torch.dtype) -> int:
    """Store every frozen ``nn.Linear`` weight (and bias) of ``model`` in ``dtype``; returns how many
    weights changed. Only for inference under autocast to ``dtype``: training keeps fp32 masters."""
    return _weights(_store(model, dtype))


def _applies(model: Any, precision: Any) -> bool:
    """bf16 autocast only; not DoRA (peft's ``use_dora``), whose weight norm reads the base weight outside
    autocast's casts."""
    dora = any(any(d.values()) for m in model.modules() if isinstance(d := getattr(m, "use_dora", None), dict))
    return precision.name == "bf16" and not dora


def store_for_inference(model: Any, precision: Any) -> int:
    """Before evaluating under ``precision``: frozen weights stored in bf16 when it is bf16 autocast (the
    answers are those of autocast over fp32 weights). Returns how many weights changed."""
    return store_frozen_linears(model, torch.bfloat16) if _applies(model, precision) else 0


@contextmanager
def inference_weights(model: Any, precision: Any) -> Iterator[int]:
    """``store_for_inference`` for the duration of an evaluation inside training: the fp32 parameters
    themselves are put back afterwards (same objects, tied head re-tied). Yields how many weights changed."""
    if not _applies(model, precision):
        yield 0
        return
    replaced = _store(model, torch.bfloat16)
    try:
        yield _weights(replaced)
    finally:
        for module, name, old in reversed(replaced):
            setattr(module, name, old)
