"""The report's plots as SVG text (matplotlib, no display): curves with seed bands, bars per group,
the DP ε curve and message bytes against quality. Plain data in, a self-contained <svg> out."""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and no font files inside
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})  # no time stamp: the same data, the same file
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG sits inside HTML


def curves(series: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], ylabel: str, title: str,
           zero_line: bool = False, colour_of: Mapping[str, int] | None = None) -> str:
    """One line per arm (the mean over its seeds at each round) with a band from the lowest to the
    highest seed; ``series``: arm -> seed -> [(round, value)]. ``zero_line`` marks y = 0 (differences);
    ``colour_of`` (arm -> index) keeps an arm's colour across figures that leave some arms out."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    for i, (arm, seeds) in enumerate(series.items()):
        rounds = sorted({r for pts in seeds.values() for r, v in pts if v is not None and math.isfinite(v)})
        if not rounds:
            continue
        by_round = {r: [v for pts in seeds.values() for rr, v in pts if rr == r and v is not None and math.isfinite(v)]
                    for r in rounds}
        mean = [statistics.fmean(by_round[r]) for r in rounds]
        k = colour_of.get(arm, i) if colour_of else i
        color = f"C{k % 10}"
        ax.plot(rounds, mean, marker="o", markersize=3, color=color, label=arm,
                linestyle="-" if k < 10 else "--")
        if any(len(v) > 1 for v in by_round.values()):
            ax.fill_between(rounds, [min(by_round[r]) for r in rounds], [max(by_round[r]) for r in rounds],
                            color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _svg(fig)


def bars(values: Mapping[str, Mapping[str, float]], ylabel: str, title: str) -> str:
    """Grouped bars: one group per category (e.g. language), one bar per arm; ``values``: arm -> category -> value."""
    import numpy as np

    categories = sorted({c for per in values.values() for c in per})
    fig, ax = _figure(max(6.4, 0.5 * len(categories) * max(len(values), 1) / 2), 4.0)
    width = 0.8 / max(len(values), 1)
    x = np.arange(len(categories))
    for i, (arm, per) in enumerate(values.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [per.get(c, float("nan")) for c in categories], width, label=arm,
               color=f"C{i % 10}")
    ax.set_xticks(x, categories, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    return _svg(fig)


def xy(points: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
       log_x: bool = False, connect: bool = True) -> str:
    """Lines (or labelled points, ``connect=False``) of (x, y) per series: the ε curve, bytes vs quality."""
    fig, ax = _figure()
    for i, (name, pts) in enumerate(points.items()):
        pts = sorted((x, y) for x, y in pts if x is not None and y is not None and math.isfinite(y))
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if connect:
            ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=name)
        else:
            ax.scatter(xs, ys, color=f"C{i % 10}", label=name, s=24)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _svg(fig)
