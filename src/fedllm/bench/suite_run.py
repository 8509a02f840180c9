"""Running a suite: each cell trains (or resumes) in a process of its own, its `fedllm eval` metrics
follow, and its numbers go into one results store (``results.jsonl``: a row per cell × metric, with
the config hash, seed and code version).

Finished cells are skipped, interrupted ones resumed from their checkpoints, cells whose
configuration changed since they ran are moved aside (never deleted) and run again. Cells run in
parallel processes with ``jobs`` > 1, each with its share of the cores (or one GPU of ``gpus``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedllm.bench.suite import RUN_METRIC, Cell, Suite, save_snapshot
from fedllm.children import die_with_parent
from fedllm.config import config_fingerprint, dump_config
from fedllm.jsonl import JsonlCache, write_json_atomic, write_text_atomic
from fedllm.runs import GROUPS, GROUPS_DIR, SUMMARY, RunError, is_grouped, read_run_config, started

RESULTS = "results.jsonl"
DISTRIBUTION = "fedllm-kit"  # the name fedllm is published under (the import package is fedllm)
COST = {"train_seconds": None, "eval_seconds": None, "local_steps": "cost", "train_tokens": "cost",
        "train_flops": "cost", "bytes_up": "cost", "bytes_down": "cost"}  # figure -> summary section (None: top)


def code_version() -> str:
    """fedllm's version, plus the git commit (and ``.dirty``) when it runs from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version(DISTRIBUTION)
    except PackageNotFoundError:
        v = "unknown"
    src = Path(__file__).resolve().parents[3]
    if (src / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if sha:
                v += f"+g{sha}" + (".dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return v


class ResultsStore:
    """``results.jsonl``: one row per (cell, metric, config hash), appended as each cell finishes; a
    line cut by a kill is skipped when read, a later row for the same key wins."""

    def __init__(self, path: Path) -> None:
        self._cache = JsonlCache(path)

    @staticmethod
    def key(cell: str, metric: str, config_hash: str) -> str:
        return f"{cell}|{metric}|{config_hash}"

    def add(self, rows: list[dict[str, Any]]) -> None:
        self._cache.put_many([(self.key(r["cell"], r["metric"], r["config_hash"]), r) for r in rows])

    def sources(self, cell: str, config_hash: str) -> set[str]:
        """The metrics (``heldout``, ``cost`` or a `fedllm eval` metric) recorded for a cell's configuration."""
        return {r["source"] for r in self._cache.data.values() if r["cell"] == cell and r["config_hash"] == config_hash}

    def rows(self, suite: Suite | None = None) -> list[dict[str, Any]]:
        """Every row; for a suite, only its cells' rows under their current configurations."""
        rows = list(self._cache.data.values())
        if suite is None:
            return rows
        current = {c.id: c.config_hash for c in suite.cells}
        return [r for r in rows if current.get(r["cell"]) == r["config_hash"]]


@dataclass
class Step:
    """What a cell needs: ``done``; ``evaluate`` (trained, metrics missing); ``resume``; ``train``;
    ``replace`` (a run of another configuration is in its directory: moved aside, then trained)."""

    cell: Cell
    action: str
    why: str = ""


def plan(suite: Suite, store: ResultsStore) -> list[Step]:
    steps = []
    for cell in suite.cells:
        d, h = cell.cfg.run_dir, cell.config_hash
        if not d.exists() or not any(d.iterdir()):
            steps.append(Step(cell, "train"))
            continue
        try:
            same = config_fingerprint(read_run_config(d)) == h
        except RunError:
            same = False
        if not same:
            steps.append(Step(cell, "replace", "its directory holds a run of another configuration"))
        elif not (d / SUMMARY).is_file():
            begun = started(d) or is_grouped(d)
            steps.append(Step(cell, "resume" if begun else "replace",
                              "interrupted" if begun else "left incomplete before its first checkpoint"))
        else:
            missing = [m for m in suite.spec.metrics if m not in store.sources(cell.id, h)]
            steps.append(Step(cell, "evaluate" if missing else "done", ", ".join(missing)))
    return steps


def _fedllm(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedllm.cli", *args]


@dataclass
class RunSettings:
    jobs: int = 1
    threads: int | None = None  # per job; default: the cores shared out
    gpus: tuple[str, ...] = ()


def run_suite(suite: Suite, settings: RunSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """Bring every cell to done; returns {"done": n, "failed": {cell: why}, "seconds": s}."""
    out = suite.out
    out.mkdir(parents=True, exist_ok=True)
    save_snapshot(suite)
    store = ResultsStore(out / RESULTS)
    steps = plan(suite, store)
    todo = [s for s in steps if s.action != "done"]
    say(f"suite {suite.spec.name}: {len(steps)} cells, {len(steps) - len(todo)} finished before, {len(todo)} to run"
        f" ({settings.jobs} at a time)")
    threads = settings.threads or max(1, (os.cpu_count() or 1) // max(settings.jobs, 1))
    devices: queue.Queue[str] = queue.Queue()
    for g in settings.gpus:
        devices.put(g)
    version = code_version()
    failed: dict[str, str] = {}
    lock = threading.Lock()
    t0 = time.perf_counter()
    counter = iter(range(1, len(todo) + 1))

    def work(step: Step) -> None:
        with lock:
            n = next(counter)
        device = devices.get() if settings.gpus else None
        try:
            say(f"[{n}/{len(todo)}] {step.cell.id}: {step.action}" + (f" ({step.why})" if step.why else ""))
            started_at = time.perf_counter()
            _run_cell(step, suite, out, threads, device)
            rows = collect(step.cell, suite, version, threads)
            store.add(rows)
            held = next((r["value"] for r in rows if r["metric"] == RUN_METRIC), None)
            say(f"[{n}/{len(todo)}] {step.cell.id}: done in {time.perf_counter() - started_at:.0f} s"
                + (f", held-out loss {held:.4f}" if isinstance(held, float) else ""))
        except Exception as e:  # noqa: BLE001 - one cell's trouble is recorded; the suite goes on
            why = str(e) if isinstance(e, CellFailed) else f"{type(e).__name__}: {e}"
            with lock:
                failed[step.cell.id] = why
            say(f"[{n}/{len(todo)}] {step.cell.id}: FAILED: {why}")
        finally:
            if device is not None:
                devices.put(device)

    with ThreadPoolExecutor(max_workers=max(settings.jobs, 1)) as pool:
        list(pool.map(work, todo))
    write_json_atomic(out / "failures.json", failed)
    return {"done": len(steps) - len(failed), "failed": failed, "seconds": time.perf_counter() - t0}


class CellFailed(RuntimeError):
    """A cell's training or evaluation process failed; the message ends with its log's last line."""


def _run_cell(step: Step, suite: Suite, out: Path, threads: int, device: str | None) -> None:
    cell, d = step.cell, step.cell.cfg.run_dir
    cfg_path = out / "cells" / f"{cell.id}.yaml"
    write_text_atomic(cfg_path, dump_config(cell.cfg))
    log = out / "logs" / f"{cell.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if step.action == "replace":
        aside = d.with_name(f"{d.name}.replaced-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}")
        d.rename(aside)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"moved the earlier run ({step.why}) to {aside}\n")
    if step.action in ("train", "replace"):
        _call(_fedllm("train", "-q", "-c", str(cfg_path)), log, threads, device)
    elif step.action == "resume":
        _call(_fedllm("train", "-q", "--resume", str(d)), log, threads, device)
    if suite.eval_metrics:
        e = suite.spec.eval
        args = ["eval", str(d), "--metrics", ",".join(suite.eval_metrics), "--batch-size", str(e.batch_size)]
        for key, value in e.options.items():
            args += ["--set", f"{key}={value}"]
        for flag, value in (("--data-dir", e.data_dir), ("--judge-model", e.judge_model),
                            ("--judge-base-url", e.judge_base_url), ("--judge-local", e.judge_local)):
            if value is not None:
                args += [flag, str(value)]
        _call(_fedllm(*args), log, threads, device)


def _call(cmd: list[str], log: Path, threads: int, device: str | None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd[2:])}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    if rc != 0:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise CellFailed(f"`fedllm {cmd[3]}` exited with {rc}: {last[:300]} (log: {log})")


def collect(cell: Cell, suite: Suite, version: str, threads: int) -> list[dict[str, Any]]:
    """A finished cell's rows: its held-out loss (with each client's), its cost, and every column of
    its `fedllm eval` metrics."""
    d = cell.cfg.run_dir
    summary = json.loads((d / SUMMARY).read_text(encoding="utf-8"))
    common = {"suite": suite.spec.name, "cell": cell.id, "labels": cell.labels, "config_hash": cell.config_hash,
              "seed": cell.cfg.seed, "code_version": version, "threads": threads, "run_dir": str(d),
              "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    final = summary.get("final_eval") or {}
    rows = [{**common, "source": RUN_METRIC, "metric": RUN_METRIC, "value": final.get("pooled_loss"),
             "per_client": _per_client(d)}]
    section = {None: summary, "cost": summary.get("cost") or {}}
    rows += [{**common, "source": "cost", "metric": k, "value": section[part].get(k)} for k, part in COST.items()]
    for metric in suite.eval_metrics:
        columns, per_group = eval_columns(d, metric)
        rows += [{**common, "source": metric, "metric": col, "value": v,
                  **({"per_group": {g: cols.get(col) for g, cols in per_group.items()}} if per_group else {})}
                 for col, v in columns.items()]
    return rows


def eval_columns(run_dir: Path, metric: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """A run's final `fedllm eval` columns of ``metric`` and, for a grouped run, each group's.

    `fedllm eval` scores each group's adapter apart; the run's figure is their mean weighted by the
    group's clients: the score of the model an average client ends with (per-client-local: the mean
    over clients' own adapters). A column some group lacks is left out rather than half-averaged."""
    def read(d: Path) -> dict[str, float]:
        path = d / "eval" / "final" / metric / "summary.json"
        if not path.is_file():
            raise CellFailed(f"`fedllm eval` wrote no {path}")
        return json.loads(path.read_text(encoding="utf-8")).get("columns", {})

    if not is_grouped(run_dir):
        return read(run_dir), {}
    groups = json.loads((run_dir / GROUPS).read_text(encoding="utf-8"))["groups"]
    per_group = {name: read(run_dir / GROUPS_DIR / g["dir"]) for name, g in groups.items()}
    weight = {name: len(g["clients"]) for name, g in groups.items()}
    shared = set.intersection(*(set(c) for c in per_group.values())) if per_group else set()
    columns = {}
    for col in (c for c in next(iter(per_group.values()), {}) if c in shared):
        vals = [(per_group[g][col], weight[g]) for g in per_group]
        if all(isinstance(v, (int, float)) for v, _ in vals):
            columns[col] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
    return columns, per_group


def _per_client(run_dir: Path) -> dict[str, float]:
    """Each client's final held-out loss under the run's final adapter (its group's, in a grouped run)."""
    from fedllm.bench.report import load_run

    evals = load_run(run_dir)["evals"]
    final = evals[-1].get("per_client", {}) if evals else {}
    return {c: r["loss"] for c, r in final.items() if r.get("loss") is not None}
