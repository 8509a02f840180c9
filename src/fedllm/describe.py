"""Descriptive statistics of a list of numbers (mean ± std, quantiles) and their one-line rendering,
shared by dataset statistics and evaluation summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


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


def fmt_pm(stat: dict[str, Any], digits: int = 1) -> str:
    """'mean ± std' for a mean_std dict; '–' when undefined."""
    mean, std = stat.get("mean"), stat.get("std")
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


__all__ = ["describe", "fmt_pm", "mean_std"]
