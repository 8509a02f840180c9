"""Build directories shared by every source: a data file plus manifest.json under a cache key,
valid only when the manifest's key matches and the data file's sha256 is the one it records,
and published by renaming a finished temporary directory into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"


def say(progress: bool, msg: str) -> None:
    """Builders report progress and counts on stderr when asked to."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


def build_key(blob: Any) -> str:
    """A short, stable cache key of everything a build depends on."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def _has_manifest(build_dir: Path, key: str) -> bool:
    return read_build_manifest(build_dir, key) is not None


@contextmanager
def staging(root: Path, key: str, is_complete: Callable[[Path, str], bool] = _has_manifest) -> Iterator[Path]:
    """A temporary sibling of root/key to write a build into. When the block succeeds it is renamed
    to root/key (or dropped if a complete build got there first); when it fails it is removed, so a
    crash never leaves a build that looks done."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{key}-"))
    final = root / key
    try:
        yield tmp
        if final.exists():  # a stale or broken build under the same key, or a concurrent builder's
            if is_complete(final, key):
                shutil.rmtree(tmp)
                return
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
