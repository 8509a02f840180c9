"""Small pieces shared by the statistics: summaries, seeded per-client orders, a resumable on-disk
cache and progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from rich.console import Console

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def stable_hash(*parts: Any, size: int = 16) -> str:
    """Hex digest of the JSON of `parts`: the same in every process, platform and Python version."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[: 2 * size]


def mean_std(values: Iterable[float]) -> dict[str, float | int]:
    """{mean, std, n} of the finite values; std is the population std (ddof=0); NaN where there are none."""
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def describe(values: Sequence[float]) -> dict[str, float | int]:
    """{n, mean, std, min, median, max} of a list (NaN fields for an empty one)."""
    out: dict[str, float | int] = dict(mean_std(values))
    arr = np.asarray(values, dtype=float)
    for name, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
        out[name] = float(fn(arr)) if arr.size else float("nan")
    return out


def seeded_order(n: int, seed: int, client_id: str) -> list[int]:
    """A permutation of range(n) fixed by (seed, client id): the first k of it are the k samples a capped
    statistic uses, so a larger cap extends the choice (and reuses cached results) instead of redrawing it."""
    key = int(stable_hash("order", seed, client_id, size=8), 16)
    return np.random.default_rng(key).permutation(n).tolist()


def fmt_pm(stat: dict[str, Any], digits: int = 1) -> str:
    """'mean ± std' for a mean_std dict; '–' when undefined."""
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so stats.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@contextlib.contextmanager
def progress_bar(console: Console | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields advance(n); a rich bar on `console`, nothing when console is None or total is 0."""
    if console is None or total <= 0:
        yield lambda n=1: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
