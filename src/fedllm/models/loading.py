"""Load a base causal LM and its tokenizer: HF hub id, local directory, .gguf file, the embedded
default, or a tiny random model for tests. The base model is loaded once per process and shared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedllm.models import embedded
from fedllm.models.precision import Precision, resolve_device, resolve_precision
from fedllm.paths import cache_root


class ModelError(ValueError):
    """The base model cannot be found or loaded; the message names model.name and what to do."""


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("org/name"): absolute, ./ or ../, ~, or more than one '/'."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name in (".", "..")


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
            raise ModelError(f"model.name={name!r}: no such GGUF file")
        model, tokenizer = _from_pretrained(str(path.parent), None, False, gguf_file=path.name)
        source = name
    else:
        path = Path(name).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ModelError(f"model.name={name!r} is a path but not a model directory (no config.json)")
            name = str(path)
        elif _looks_like_path(name):
            raise ModelError(f"model.name={name!r}: no such directory; give a local model directory, a .gguf "
                             f"file, a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct, or "
                             f"smollm2-135m-instruct (the embedded default)")
        try:
            model, tokenizer = _from_pretrained(name, cfg.revision, cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"model.name={name!r} could not be loaded from a local directory or the hub: {first}") from None
        source = name
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.to(device)
    name, why = resolve_precision(cfg.precision, device, model, cache_root())
    return BaseModel(model=model, tokenizer=tokenizer, precision=Precision(name, device, why), source=source)


def weights_bytes(cfg: Any) -> int | None:
    """Bytes of ``cfg.model``'s weight files as stored, without loading them; None where they are not on this
    machine yet (a hub model not downloaded, a GGUF whose dequantized size is not its file's)."""
    name = cfg.name
    if name == "tiny":
        return 0  # a test model of a few hundred kilobytes
    if name.lower() in embedded.ALIASES:
        path: Path | None = embedded.model_dir()
    elif name.endswith(".gguf"):
        return None
    else:
        path = Path(name).expanduser()
        if not path.is_dir():
            path = _hub_snapshot(name, cfg.revision)
    if path is None:
        return None
    files = [f for pattern in ("*.safetensors", "*.bin") for f in path.glob(pattern)]
    return sum(f.stat().st_size for f in files) if files else None


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The local snapshot directory of a hub model already in the hub's cache, else None (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(hit).parent if isinstance(hit, str) else None
