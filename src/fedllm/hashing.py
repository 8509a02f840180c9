"""Content hashes that are the same in every process, platform and Python version (cache keys,
fingerprints): a digest of canonical JSON, never Python's salted ``hash()``."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(*parts: Any, size: int = 16) -> str:
    """Hex digest (`size` bytes, 2 * size hex digits) of the canonical JSON of `parts`."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[: 2 * size]


__all__ = ["stable_hash"]
