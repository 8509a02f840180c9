"""A run's adapter merged into its base model and saved in the Hugging Face layout (safetensors,
config, tokenizer), loadable by ``AutoModelForCausalLM.from_pretrained`` with no peft and no fedllm."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedllm.eval.target import Target, resolve_target
from fedllm.jsonl import atomic_dir, dumps

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MERGEABLE = ("lora", "dora", "ia3")  # methods whose update folds into the weights; virtual tokens do not


class ExportError(ValueError):
    """The run cannot be exported as asked; the message says why and what to do."""


@dataclass
class Merged:
    """The merged model (a plain transformers model), its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    target: Target
    base_source: str  # the model the adapter was trained on (hub id, directory or GGUF)


def merged_model(spec: str) -> Merged:
    """Load a run (``spec`` as for `fedllm eval`) and fold its adapter into the base weights (fp32)."""
    from fedllm.eval.runner import load_targets_model, select_target

    target = resolve_target(spec)
    if target.adapter_file is None:
        raise ExportError(f"{spec}: has no adapter to merge; export a run directory or an adapter")
    method = target.cfg.peft.method
    if method not in MERGEABLE:
        raise ExportError(f"{spec}: a {method} adapter adds virtual tokens instead of changing weights, so it cannot "
                          f"be merged into the base model; serve it with its base (fedllm chat / ui)")
    base, slot = load_targets_model([target])
    select_target(target, base, slot)
    model = base.model.float().merge_and_unload()
    model.eval()
    return Merged(model, base.tokenizer, target, base.source)


def save_merged(merged: Merged, out: Path, dtype: str = "float32") -> Path:
    """Write the merged model to ``out`` (replaced whole, never half-written): safetensors weights in
    ``dtype``, config, generation config, tokenizer, and ``fedllm_export.json`` naming the run."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
    model = merged.model.to(DTYPES[dtype])
    try:
        with atomic_dir(out, prefix=".exporting-") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            merged.tokenizer.save_pretrained(tmp)
            info = {"run": str(merged.target.run_dir or merged.target.adapter_file), "label": merged.target.label,
                    "adapter_sha256": merged.target.adapter_sha, "base_model": merged.base_source,
                    "template": merged.target.cfg.data.template, "dtype": dtype}
            (Path(tmp) / "fedllm_export.json").write_text(dumps(info, indent=1) + "\n", encoding="utf-8")
            mask = os.umask(0)
            os.umask(mask)
            for f in Path(tmp).iterdir():  # some writers make their files private; a model is for sharing
                os.chmod(f, 0o666 & ~mask)
    finally:
        model.to(torch.float32)
    return out
