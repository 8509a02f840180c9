"""How a per-client number spreads over clients: the fairness view of a model (or of personalised
models) beside its average. For losses, lower is better, so the worst clients are the highest."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping


def spread(values: Iterable[float], higher_is_worse: bool = True) -> dict[str, float | int]:
    """Mean, median, standard deviation, best and worst client, and the worst decile: the mean of the
    worst ⌈n/10⌉ clients (at least one), so it is defined for small federations too."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"clients": 0}
    ordered = sorted(xs, reverse=higher_is_worse)  # worst first
    k = max(1, math.ceil(len(xs) / 10))
    return {"clients": len(xs), "mean": statistics.fmean(xs), "median": statistics.median(xs),
            "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0, "worst": ordered[0], "best": ordered[-1],
            "worst_decile": statistics.fmean(ordered[:k])}


def compare(personal: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float | int]:
    """Per client, personal against reference (losses): how many clients gain and the mean gain."""
    both = [c for c in personal if c in reference]
    gains = [reference[c] - personal[c] for c in both]
    return {"clients": len(both), "better": sum(g > 0 for g in gains),
            "mean_gain": statistics.fmean(gains) if gains else float("nan")}
