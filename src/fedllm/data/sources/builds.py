"""Build directories shared by every source: a data file plus manifest.json, valid only when the
manifest's cache key matches and the data file's sha256 is the one it records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_build_manifest(build_dir: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a complete, uncorrupted build with this key, else None."""
    try:
        manifest = json.loads((build_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        data = build_dir / manifest["data_file"]
        if manifest.get("cache_key") == key and file_sha256(data) == manifest["content_sha256"]:
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
