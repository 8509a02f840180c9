"""Durable files: an append-only JSONL key -> value cache, and atomic whole-file writes.

Every JSON text goes through :func:`dumps`: strict JSON (RFC 8259), so NaN and infinities are written
as null, never as the bare ``NaN``/``Infinity`` that other parsers refuse.

The cache serves every resumable computation (dataset statistics, per-item evaluation results,
judgments): each finished result is appended and flushed as it comes, so an interrupted run keeps
what it computed and the next run resumes; a line torn by a kill is ignored on load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, tuples -> lists, dict keys -> str: strict JSON values."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``: strict JSON (NaN/inf become null), non-ASCII kept;
    `kwargs` go to json.dumps (indent, separators, default ...)."""
    return json.dumps(json_safe(obj), allow_nan=False, **{"ensure_ascii": False, **kwargs})


class JsonlCache:
    """Append-only key -> JSON value store in one file. `hits` and `misses` count lookups since the
    cache was opened. ``path=None`` keeps everything in memory. Values are written with :func:`dumps`
    (a NaN/inf value reads back as None); in memory a value stays as it was put."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.data: dict[str, Any] = {}
        self.hits = self.misses = 0
        self._lock = threading.Lock()  # evaluation workers append from threads
        if self.path is not None and self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.data[rec["k"]] = rec["v"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by an interruption

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str) -> Any:
        if key in self.data:
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        with self._lock:
            self._append(items)

    def _append(self, items: Iterable[tuple[str, Any]]) -> None:
        lines = []
        for key, value in items:
            self.data[key] = value
            lines.append(dumps({"k": key, "v": value}, separators=(",", ":")) + "\n")
        if self.path is None or not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            if f.tell():  # after a torn last line, start on a fresh one
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None], *, mode: str = "w") -> None:
    """Call `write(f)` on a temporary file beside `path`, then os.replace it over `path`:
    readers see the old file or the new one, never half of one; the temp file is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_dir(out_dir: Path, prefix: str | None = None) -> Iterator[Path]:
    """A fresh directory beside ``out_dir`` to fill; when the block ends without error it replaces
    ``out_dir`` whole (with the permissions of a plain new directory), so ``out_dir`` is never half-written."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; what it becomes is not
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    write_text_atomic(path, dumps(obj, indent=1, default=str))


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(dumps(r, default=str) + "\n" for r in rows))
