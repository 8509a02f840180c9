"""Where `fedllm eval`'s generation time goes: runs one `fedllm eval` command in this process with timers
around the decoding loop's phases (prompts run, decoding steps, rows leaving the batch, rows joining it,
per-token bookkeeping), and prints seconds and calls per phase.

    .venv/bin/python -m benchmarks.bench_eval_phases -- base --metrics humaneval --data-dir ../shared/eval-data \
        --batch-size 32 --set humaneval.max_new_tokens=256 --out /tmp/phases

Everything after ``--`` is `fedllm eval`'s own arguments; give a fresh ``--out`` (and, for a run target, remove
its ``eval/`` directory), or finished answers are read back instead of generated.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from benchmarks.common import write_result
from fedllm.eval import generation

# TextModel.generate whole; prompts entering; decoding steps (forward, draft checks); finished rows leaving the
# batch; per-token bookkeeping (sampling, stop strings, code blocks). Rows joining: the module's _merge.
PHASES = ("generate", "_prefill", "_step", "_retire", "_take")


def timed(seconds: defaultdict[str, float], calls: Counter[str], name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - t0
            calls[name] += 1
    return wrapper


def main() -> None:
    argv = sys.argv[1:]
    eval_args = argv[argv.index("--") + 1:] if "--" in argv else argv
    seconds: defaultdict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    for name in PHASES:
        setattr(generation.TextModel, name, timed(seconds, calls, name, getattr(generation.TextModel, name)))
    generation._merge = timed(seconds, calls, "_merge", generation._merge)  # rows joining a running batch
    from fedllm.cli import app

    t0 = time.perf_counter()
    try:
        app(["eval", *eval_args], standalone_mode=False)
    finally:
        wall = time.perf_counter() - t0
        rows = {name: {"seconds": round(seconds[name], 2), "calls": calls[name]}
                for name in sorted(seconds, key=seconds.__getitem__, reverse=True)}
        write_result("eval_phases", {"command": ["fedllm", "eval", *eval_args], "wall_s": round(wall, 1), "phases": rows})


if __name__ == "__main__":
    main()
