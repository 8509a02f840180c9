"""Small durable JSON files: an append-only key -> value cache, and atomic whole-file writes.

The cache serves every resumable computation (dataset statistics, per-item evaluation results,
judgments): each finished result is appended and flushed as it comes, so an interrupted run keeps
what it computed and the next run resumes; a line torn by a kill is ignored on load.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class JsonlCache:
    """Append-only key -> JSON value store in one file. `hits` and `misses` count lookups since the
    cache was opened. ``path=None`` keeps everything in memory."""

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
            lines.append(json.dumps({"k": key, "v": value}, separators=(",", ":"), ensure_ascii=False) + "\n")
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


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
