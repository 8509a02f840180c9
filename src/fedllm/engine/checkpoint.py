"""Checkpoints: global adapter + server state + client store + counters, written atomically (a
temporary directory renamed into place), so a kill or a full disk at any point leaves the last
complete checkpoint intact. Reading one checks every file; resume falls back to an older intact
checkpoint when the newest is damaged."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedllm.engine.store import ClientStateStore, io_reason
from fedllm.fl.state import State
from fedllm.jsonl import dumps
from fedllm.runs import RunError, list_checkpoints

CLIENT_STATE = "client_state"


class CheckpointError(RunError):
    """A checkpoint directory is incomplete or damaged; the message names the file."""


@dataclass
class Checkpoint:
    round: int  # rounds completed
    global_state: State
    server_state: dict[str, torch.Tensor | int | float]
    info: dict[str, Any]  # metrics offset, timings, config and its fingerprint, …
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
    """Write ``round-<round_done>`` atomically and keep the newest ``keep``; on an I/O error the
    partial directory is removed and the older checkpoints stay as they were."""
    final = ckpt_root / f"round-{round_done}"
    tmp = ckpt_root / f".round-{round_done}.tmp"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in global_state.items()}, str(tmp / "adapter.safetensors"))
        tensors = {k: v.contiguous() for k, v in server_state.items() if isinstance(v, torch.Tensor)}
        scalars = {k: v for k, v in server_state.items() if not isinstance(v, torch.Tensor)}
        if tensors:
            save_file(tensors, str(tmp / "server.safetensors"))
        if store is not None:
            store.snapshot(tmp / CLIENT_STATE)
        meta = {"round": round_done, "server_scalars": scalars, "info": info}
        (tmp / "state.json").write_text(dumps(meta, indent=1), encoding="utf-8")
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        older = list_checkpoints(ckpt_root)
        kept = f"the last complete checkpoint, {older[-1].name}, is intact" if older else "no earlier checkpoint exists"
        raise RunError(f"cannot write checkpoint {final} ({io_reason(e)}); {kept}. "
                       f"Free space or fix the directory, then resume with `fedllm train --resume {ckpt_root.parent}`") from None
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
    try:
        return reader(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e})") from None


def _check_tensors_file(path: Path) -> None:
    """Open a safetensors file and touch every tensor, so a truncated file is caught now."""
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            f.get_slice(k)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check one checkpoint; CheckpointError names the damaged or missing file."""
    meta = _read(path / "state.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
    if not isinstance(meta, dict) or not {"round", "server_scalars", "info"} <= meta.keys():
        raise CheckpointError(f"{path / 'state.json'} is damaged (keys missing)")
    server: dict[str, Any] = dict(meta["server_scalars"])
    if (path / "server.safetensors").exists():
        server.update(_read(path / "server.safetensors", lambda p: load_file(str(p))))
    global_state = _read(path / "adapter.safetensors", lambda p: load_file(str(p)))
    store_dir = path / CLIENT_STATE
    if store_dir.is_dir():
        for f in sorted(store_dir.glob("*.safetensors")):
            _read(f, _check_tensors_file)
    return Checkpoint(round=int(meta["round"]), global_state=global_state, server_state=server,
                      info=meta["info"], path=path)


def load_latest(ckpt_root: Path, warn: Callable[[str], None]) -> Checkpoint | None:
    """The newest intact checkpoint; a damaged newer one is renamed ``round-N.damaged`` with a warning.
    None when there is no checkpoint at all; CheckpointError when none is intact."""
    problems: dict[Path, str] = {}
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            ck = load_checkpoint(path)
        except CheckpointError as e:
            problems[path] = str(e)
            continue
        for bad, why in problems.items():
            aside = bad.with_name(bad.name + ".damaged")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(bad, aside)
            warn(f"checkpoint {bad.name} is damaged: {why}; resuming from {path.name} "
                 f"(the damaged one is kept as {aside.name})")
        return ck
    if problems:
        raise CheckpointError("no intact checkpoint to resume from: " + "; ".join(problems.values())
                              + ". Start again under a new name (name=...)")
    return None
