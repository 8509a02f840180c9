"""The run directory while a run owns it: an exclusive lock (two trainers never write one run) and
the removal of debris a killed process can leave (temporary checkpoint, adapter and file copies)."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from types import TracebackType

from fedllm.runs import CHECKPOINTS, LOCK, RunError


class RunLock:
    """``flock`` on ``<run_dir>/.lock``; the kernel releases it when the process dies, kill -9 included."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            owner = _read_owner(path)
            raise RunError(f"{self.run_dir} is in use by another fedllm process{owner}; wait for it to finish, "
                           f"or train under another name (name=...)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _read_owner(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def remove_debris(run_dir: Path) -> list[str]:
    """Delete what an interrupted writer leaves: ``.adapter-*`` directories (final adapter save),
    ``checkpoints/.round-N.tmp`` and ``.<file>.*.tmp`` files (atomic writes). Returns their names."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(".adapter-*") if p.is_dir()]
    found += [p for p in run_dir.glob(".*.tmp")]
    found += [p for p in (run_dir / CHECKPOINTS).glob(".round-*.tmp")]
    for p in found:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return sorted(p.name for p in found)
