"""Checkpoints: global adapter + server-optimizer state + client store + counters, written
atomically (a temporary directory renamed into place), so a kill at any point leaves the last
complete checkpoint intact."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedllm.engine.store import ClientStateStore
from fedllm.fl.state import State

_ROUND = re.compile(r"^round-(\d+)$")


@dataclass
class Checkpoint:
    round: int  # rounds completed
    global_state: State
    server_state: dict[str, torch.Tensor | int | float]
    info: dict[str, Any]  # metrics offset, timings, …
    path: Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(ckpt_root: Path, round_done: int, global_state: State, server_state: dict[str, Any],
                    store: ClientStateStore | None, info: dict[str, Any], keep: int = 2) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"round-{round_done}"
    tmp = ckpt_root / f".round-{round_done}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in global_state.items()}, str(tmp / "adapter.safetensors"))
    tensors = {k: v.contiguous() for k, v in server_state.items() if isinstance(v, torch.Tensor)}
    scalars = {k: v for k, v in server_state.items() if not isinstance(v, torch.Tensor)}
    if tensors:
        save_file(tensors, str(tmp / "server.safetensors"))
    if store is not None:
        store.snapshot(tmp / "client_state")
    meta = {"round": round_done, "server_scalars": scalars, "info": info}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _ROUND.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path) -> Checkpoint:
    meta = json.loads((path / "state.json").read_text())
    server: dict[str, Any] = dict(meta["server_scalars"])
    if (path / "server.safetensors").is_file():
        server.update(load_file(str(path / "server.safetensors")))
    return Checkpoint(round=int(meta["round"]), global_state=load_file(str(path / "adapter.safetensors")),
                      server_state=server, info=meta["info"], path=path)
