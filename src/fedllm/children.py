"""What a child process of fedllm does first so that it never outlives the command that started it."""

from __future__ import annotations

import signal


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Be killed when the parent process dies (Linux), even by kill -9; a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
