"""Where fedllm keeps what it builds once: models and datasets under ``$FEDLLM_CACHE`` or ~/.cache/fedllm."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("FEDLLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedllm"
