"""Encoded features of a client's samples on disk, keyed by the task and the samples' content, so a
client's data is tokenized once per task instead of once per round and run: the run's setup scan
(which counts samples truncated to nothing) fills it, and every client round reads it back.

One safetensors file per (task, content): each list-valued feature key is stored as one int64 array
of all values plus offsets, each integer key as one array; reading gives back exactly the features
``Task.encode`` made. A damaged or unreadable file is encoded again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedllm.data.schema import Sample
from fedllm.hashing import stable_hash
from fedllm.train.task import Encoded, Task


def content_key(samples: Sequence[Sample]) -> str:
    """A digest of the samples themselves (kind and every field), in order."""
    return stable_hash([(type(s).__name__, dataclasses.asdict(s)) for s in samples])


def pack(enc: Encoded) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Features as flat tensors: ``<key>.values``/``<key>.offsets`` for lists, ``<key>`` for integers."""
    tensors: dict[str, torch.Tensor] = {}
    keys = sorted(enc.features[0]) if enc.features else []
    for key in keys:
        column = [f[key] for f in enc.features]
        if isinstance(column[0], (list, tuple)):
            lengths = torch.tensor([len(v) for v in column], dtype=torch.int64)
            tensors[f"{key}.offsets"] = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
            tensors[f"{key}.values"] = torch.tensor([x for v in column for x in v], dtype=torch.int64)
        else:
            tensors[key] = torch.tensor(column, dtype=torch.int64)
    return tensors, {"reasons": json.dumps(enc.reasons), "count": str(len(enc.features)), "keys": ",".join(keys)}


def unpack(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Encoded:
    n = int(meta["count"])
    columns: dict[str, list[Any]] = {}
    for key in filter(None, meta["keys"].split(",")):
        if f"{key}.values" in tensors:
            values, offsets = tensors[f"{key}.values"].tolist(), tensors[f"{key}.offsets"].tolist()
            columns[key] = [values[offsets[i]:offsets[i + 1]] for i in range(n)]
        else:
            columns[key] = tensors[key].tolist()
    return Encoded([{k: col[i] for k, col in columns.items()} for i in range(n)], json.loads(meta["reasons"]))


class EncodingCache:
    """``encode(samples)`` as ``task.encode`` would, read from ``root/<task fingerprint>/`` when there."""

    def __init__(self, root: Path, task: Task) -> None:
        self.task = task
        self.dir = Path(root) / task.fingerprint()

    def encode(self, samples: Sequence[Sample]) -> Encoded:
        path = self.dir / f"{content_key(samples)}.safetensors"
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata()
                return unpack(load_file(str(path)), meta)
            except (SafetensorError, OSError, KeyError, ValueError):
                pass  # damaged: encode again and replace it
        enc = self.task.encode(samples)
        self._save(path, enc)
        return enc

    @staticmethod
    def _save(path: Path, enc: Encoded) -> None:
        """Write atomically; a cache that cannot be written (full or read-only disk) is simply not used."""
        tensors, meta = pack(enc)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            os.close(fd)
            try:
                save_file(tensors, tmp, metadata=meta)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (OSError, SafetensorError):
            pass
