"""Content hashes that are the same in every process, platform and Python version (cache keys,
fingerprints): a digest of canonical JSON, never Python's salted ``hash()``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any


def stable_hash(*parts: Any, size: int = 16) -> str:
    """Hex digest (`size` bytes, 2 * size hex digits) of the canonical JSON of `parts`."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[: 2 * size]


def tensor_digest(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 of named tensors: each name, dtype, shape and raw bytes, in the order given (equal to the
    bit, or not)."""
    import torch

    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["stable_hash", "tensor_digest"]
