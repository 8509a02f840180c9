"""FLoRA's model side: the base weights of LoRA's target modules plus a merged ΔW, a client's own
LoRA scaling, and the merged ΔW saved as a peft LoRA adapter of exact factors.

The base is never merged in place round after round: W = W0 + ΔW is written from the weights the
model held on entry, and W0 is written back on exit, so the same ΔW always gives the same model and
a model shared by several runs or clients is left as it was found.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedllm.fl.hetero_lora import factor_rank, merged_modules
from fedllm.jsonl import atomic_dir
from fedllm.models.adapters import AdapterSlot, _make_config_deterministic


def _lora_layers(model: Any) -> dict[str, Any]:
    """Module name -> peft LoRA layer (those with an adapter scaling)."""
    return {n: m for n, m in model.named_modules() if isinstance(getattr(m, "scaling", None), dict)
            and hasattr(m, "get_base_layer")}


@contextmanager
def merged_base(model: Any, delta_w: Mapping[str, Tensor] | None) -> Iterator[None]:
    """While entered, each named module's base weight is W0 + ΔW (computed in fp32, cast to the
    weight's dtype); on exit W0 is back, bit for bit. None or empty: the model as it is."""
    if not delta_w:
        yield
        return
    saved: dict[str, Tensor] = {}
    try:
        with torch.no_grad():
            for name, dw in delta_w.items():
                w = model.get_submodule(name).get_base_layer().weight
                if tuple(dw.shape) != tuple(w.shape):
                    raise ValueError(f"merged ΔW of {name} has shape {tuple(dw.shape)}, the weight {tuple(w.shape)}")
                saved[name] = w.detach().clone()
                w.copy_((saved[name].float() + dw.to(w.device, torch.float32)).to(w.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, w0 in saved.items():
                model.get_submodule(name).get_base_layer().weight.copy_(w0)


@contextmanager
def lora_scaling(model: Any, scale: float | None) -> Iterator[None]:
    """While entered, every LoRA layer scales its product by ``scale`` (a rank-r_i client's α/r_i on
    the rank-r adapter); None: as the model has it."""
    if scale is None:
        yield
        return
    saved = {n: dict(m.scaling) for n, m in _lora_layers(model).items()}
    try:
        for n in saved:
            layer = model.get_submodule(n)
            for adapter in layer.scaling:
                layer.scaling[adapter] = float(scale)
        yield
    finally:
        for n, scaling in saved.items():
            model.get_submodule(n).scaling.update(scaling)


def merged_factors(merged: Mapping[str, Tensor]) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """module -> exact factors (B, A) of its ΔW, zero-padded to one rank R (the largest needed), and R.
    Stacked factors are themselves exact; a dense ΔW (out × in) is factored as I·ΔW (out ≤ in) or
    ΔW·I, exact in floating point too."""
    parts = merged_modules(merged)
    R = max((factor_rank(p) for p in parts.values()), default=0)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for module, p in parts.items():
        if "W" in p:
            w = p["W"]
            rows, cols = w.shape
            b, a = (torch.eye(rows, dtype=w.dtype), w) if rows <= cols else (w, torch.eye(cols, dtype=w.dtype))
        else:
            b, a = p["B"], p["A"]
        r = a.shape[0]
        B = torch.zeros(b.shape[0], R, dtype=torch.float32)
        A = torch.zeros(R, a.shape[1], dtype=torch.float32)
        B[:, :r], A[:r] = b, a
        out[module] = (B, A)
    return out, R


def save_merged_adapter(slot: AdapterSlot, merged: Mapping[str, Tensor], out_dir: Path) -> Path:
    """Write the merged ΔW as a peft LoRA adapter directory: rank R, lora_alpha = R (scaling 1), each
    module's B·A = its ΔW (``PeftModel.from_pretrained`` on the base model loads it), atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    factors, R = merged_factors(merged)
    if R == 0:
        raise ValueError("nothing was merged: no round completed")
    keys = {k for k in slot.every}
    tensors: dict[str, Tensor] = {}
    for module, (B, A) in factors.items():
        ka, kb = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        if ka not in keys or kb not in keys:
            raise KeyError(f"merged module {module} is not a LoRA module of this model")
        tensors[ka], tensors[kb] = A.contiguous(), B.contiguous()
    config = copy.deepcopy(slot.model.peft_config[slot.model.active_adapter])
    config.r, config.lora_alpha, config.inference_mode = R, R, True
    with atomic_dir(out_dir) as tmp:
        config.save_pretrained(str(tmp))
        _make_config_deterministic(tmp / "adapter_config.json")
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out_dir
