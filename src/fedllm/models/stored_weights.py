"""Frozen matmul weights stored in the autocast dtype, for decoding.

Under bf16 autocast every ``F.linear`` casts its fp32 weight to bf16 again, and autocast caches
those casts only for weights that require grad: a frozen base model is re-cast at every decoding
step, which made bf16 decoding slower than fp32 on a CPU (0.73× at batch 1 on a Zen 5). Casting is
deterministic, so storing the frozen linear weights in bf16 once gives autocast the very tensors it
would have made: the same matmuls, the same answers, without the per-step casts. Embeddings and
norms stay as they are (autocast does not cast them); a head tied to the embeddings gets its own
bf16 copy; adapters stay fp32, as autocast casts them per call as before.

Where oneDNN computes bf16 on this CPU, each stored layer also keeps its weight in oneDNN's blocked
layout (``StoredLinear.packed``), so a matmul no longer reorders the weight at every call: bit-identical
outputs (oneDNN runs bf16 ``F.linear`` too, with the same accumulation), 1.1-1.4x faster decoding steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_Replaced = list[tuple[nn.Module, str, nn.Linear]]  # (parent, attribute, the layer it held before)


def packing_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether oneDNN runs ``dtype`` matmuls on this CPU, so weights can be held in its blocked layout."""
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class StoredLinear(nn.Linear):
    """A frozen linear layer for inference, its weight (and bias) stored in ``dtype`` and, with ``pack``, also
    held reordered for oneDNN (``packed``: the layout F.linear would reorder it to at every call)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, pack: bool) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: no fresh weights to initialise
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight) if pack else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)  # what autocast does to a linear layer's input
        if self.packed is None or (torch.is_grad_enabled() and x.requires_grad):  # the packed op has no backward
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _store(model: Any, dtype: torch.dtype, pack: bool = True) -> _Replaced:
    """Swap every frozen ``nn.Linear`` (and a head tied to the embeddings, which gets its own copy) for a
    ``StoredLinear``; returns what was swapped, so it can be put back."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tied = getattr(base.get_input_embeddings(), "weight", None)
    head = base.get_output_embeddings()
    pack = pack and packing_available(dtype, next(base.parameters()).device)
    replaced: _Replaced = []
    with torch.no_grad():
        for parent in list(base.modules()):
            for name, layer in list(parent.named_children()):
                if type(layer) is not nn.Linear or layer.weight.dtype == dtype:
                    continue
                if layer.weight.requires_grad and not (layer is head and layer.weight is tied):
                    continue
                replaced.append((parent, name, layer))
                setattr(parent, name, StoredLinear(layer, dtype, pack))
    return replaced


def store_frozen_linears(model: Any, dtype: torch.dtype, pack: bool = True) -> int:
    """Store every frozen ``nn.Linear`` weight (and bias) of ``model`` in ``dtype`` (``pack``: in oneDNN's
    layout too, where it can); returns how many weights changed. Only for inference under autocast to
    ``dtype``: training keeps fp32 masters."""
    return len(_store(model, dtype, pack))


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
        yield len(replaced)
    finally:
        for module, name, old in reversed(replaced):
            setattr(module, name, old)
