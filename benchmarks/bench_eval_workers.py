"""`fedllm eval` in one process against worker processes: the same command with ``--workers 1`` and
``--workers N``, in turn (A B A B ...), each time on fresh copies of its run targets and a fresh ``--out``,
so nothing is read back from an earlier evaluation. Prints each side's wall seconds, the ratio of the
medians, and whether the two sides' result tables are equal.

    .venv/bin/python -m benchmarks.bench_eval_workers --pairs 1 -- base runs/quickstart/local \\
        --metrics humaneval --data-dir ../shared/eval-data --batch-size 32 --max-items 48

Everything after ``--`` is `fedllm eval`'s own arguments, without ``--out`` and ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import median, write_result

CLI = [sys.executable, "-m", "fedllm.cli"]


def _fresh_targets(args: list[str], into: Path) -> list[str]:
    """The arguments with each run-directory target (``RUN`` or ``RUN@round-N``, before the first option)
    replaced by a copy of the run without its ``eval/`` directory."""
    n = next((i for i, a in enumerate(args) if a.startswith("--")), len(args))
    out = []
    for i, a in enumerate(args[:n]):
        run, at, rest = a.partition("@")
        if (Path(run) / "config.yaml").is_file():
            dest = into / f"{i}-{Path(run).name}"
            shutil.copytree(run, dest, ignore=shutil.ignore_patterns("eval"))
            a = f"{dest}{at}{rest}"
        out.append(a)
    return out + args[n:]


def _run(args: list[str], workers: int) -> tuple[float, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        cmd = [*CLI, "eval", *_fresh_targets(args, Path(tmp)), "--out", f"{tmp}/out", "--workers", str(workers)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        rows = json.loads(Path(f"{tmp}/out/results.json").read_text())["rows"]
    return wall, [{k: v for k, v in r.items() if k != "out_dir"} for r in rows]


def main() -> None:
    argv = sys.argv[1:]
    own, eval_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1, help="A B pairs, run in turn")
    parser.add_argument("--workers", type=int, default=2, help="the B side's --workers")
    opts = parser.parse_args(own)
    walls: dict[str, list[float]] = {"one": [], "workers": []}
    tables: dict[str, list[Any]] = {"one": [], "workers": []}
    for _ in range(opts.pairs):
        for side, n in (("one", 1), ("workers", opts.workers)):
            wall, rows = _run(eval_args, n)
            walls[side].append(round(wall, 1))
            tables[side].append(rows)
            print(f"{side} (--workers {n}): {wall:.1f} s", flush=True)
    write_result("eval_workers", {
        "command": ["fedllm", "eval", *eval_args], "workers": opts.workers, "wall_s": walls,
        "median_one_s": median(walls["one"]), "median_workers_s": median(walls["workers"]),
        "ratio": round(median(walls["workers"]) / median(walls["one"]), 3),
        "same_results": all(t == tables["one"][0] for t in tables["one"] + tables["workers"])})


if __name__ == "__main__":
    main()
