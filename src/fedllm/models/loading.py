"""Load a base causal LM and its tokenizer: HF hub id, local directory, .gguf file, the embedded
default, or a tiny random model for tests. The base model is loaded once per process and shared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedllm.models import embedded
from fedllm.models.precision import Precision, resolve_device, resolve_precision


@dataclass
class BaseModel:
    model: Any  # transformers PreTrainedModel (later wrapped by peft)
    tokenizer: Any
    precision: Precision
    source: str  # where it came from: a directory, hub id or "tiny"

    @property
    def device(self) -> torch.device:
        return self.precision.device


def _from_pretrained(name: str, revision: str | None, trust_remote_code: bool, gguf_file: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kw)
    return model, tokenizer


def load_base_model(cfg: Any) -> BaseModel:
    """``cfg`` is a ``config.ModelConfig``. Weights are fp32; bf16 is applied as autocast at run time."""
    device = resolve_device(cfg.device)
    precision = Precision(resolve_precision(cfg.precision, device), device)
    name = cfg.name
    if name.lower() in embedded.ALIASES:
        source = str(embedded.ensure_cached())
        model, tokenizer = _from_pretrained(source, None, False)
    elif name == "tiny":
        from fedllm.models.tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer)
        source = "tiny"
    elif name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"model.name={name!r}: GGUF file not found")
        model, tokenizer = _from_pretrained(str(path.parent), None, False, gguf_file=path.name)
        source = name
    else:
        if Path(name).exists() and not (Path(name) / "config.json").is_file():
            raise FileNotFoundError(f"model.name={name!r} is a path but has no config.json")
        model, tokenizer = _from_pretrained(name, cfg.revision, cfg.trust_remote_code)
        source = name
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.to(device)
    return BaseModel(model=model, tokenizer=tokenizer, precision=precision, source=source)
