"""Per-client persistent state (e.g. SCAFFOLD's c_i) on disk: one safetensors file per client, so
memory does not grow with the number of clients. Files are replaced atomically, which lets a
checkpoint snapshot the store with hard links (unchanged files cost nothing)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedllm.fl.state import State
from fedllm.runs import RunError


METHOD = "method"


class ClientStateStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _stem(client_id: str, kind: str) -> str:
        key = client_id if kind == METHOD else f"{client_id}\x1f{kind}"  # the method's files keep their old names
        return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()

    def _path(self, client_id: str, kind: str) -> Path:
        return self.root / f"{self._stem(client_id, kind)}.safetensors"

    def get(self, client_id: str, kind: str = "method") -> State | None:
        """The client's state of this kind (``method``: e.g. SCAFFOLD's c_i; ``codec``: error-feedback residuals)."""
        path = self._path(client_id, kind)
        return load_file(str(path)) if path.is_file() else None

    def put(self, client_id: str, state: State, kind: str = "method") -> None:
        """Replace the client's state atomically; on an I/O error the previous state stays."""
        path = self._path(client_id, kind)
        tmp = path.with_suffix(".tmp")
        try:
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"client_id": client_id})
            os.replace(tmp, path)
        except (OSError, SafetensorError) as e:
            tmp.unlink(missing_ok=True)
            raise RunError(f"cannot write the state of client {client_id!r} to {path} ({io_reason(e)}); free space, "
                           f"then resume the run with `fedllm train --resume`") from None

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.safetensors"))

    def snapshot(self, dest: Path) -> None:
        """Hard-link (or copy, across file systems) every client file into ``dest``."""
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.root.glob("*.safetensors"):
            _link_or_copy(f, dest / f.name)

    def clear(self) -> None:
        for f in self.root.iterdir():
            f.unlink()

    def restore(self, src: Path) -> None:
        """Make the store exactly the snapshot in ``src`` (empty if there is none)."""
        self.clear()
        if src.is_dir():
            for f in src.glob("*.safetensors"):
                _link_or_copy(f, self.root / f.name)


def io_reason(e: BaseException) -> str:
    """The operating system's words for an I/O failure (safetensors wraps them in its own error)."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = str(e)
    return text.split("I/O error: ", 1)[1].split(" (os error")[0] if "I/O error: " in text else text


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
