"""A suite's results as tables: each arm (the cell labels other than the seed) with mean ± std over
seeds per metric, and whether its held-out loss differs from the reference arm's beyond noise.

Significance is paired by client: for each client, the arm's final held-out loss minus the
reference's under the same seed, averaged over seeds; the 95% interval is a t interval over clients
and the p-value a sign-flip test over clients (``bench.paired``), as in the quickstart's verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fedllm.bench.paired import PairedComparison, paired_comparison
from fedllm.bench.suite import RUN_METRIC, Suite
from fedllm.bench.tables import render

SEED_AXIS = "seed"


@dataclass
class Arm:
    """One row of the table: the labels that name it and, per metric, the value of each seed."""

    labels: dict[str, str]
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # quality metric -> seed -> value
    cost: dict[str, dict[str, float]] = field(default_factory=dict)  # cost figure -> seed -> value
    per_client: dict[str, dict[str, float]] = field(default_factory=dict)  # seed -> client -> held-out loss
    cells: list[str] = field(default_factory=list)
    reference: str | None = None  # the name of the arm it is compared with (its labels, the reference's label)
    vs_reference: PairedComparison | None = None

    @property
    def name(self) -> str:
        return ", ".join(self.labels.values()) or "all"


def arms(suite: Suite, rows: list[dict[str, Any]]) -> list[Arm]:
    """The suite's arms in grid order, filled from the store's rows (cells without rows stay empty)."""
    by_key: dict[tuple[tuple[str, str], ...], Arm] = {}
    seed_of = {}
    for cell in suite.cells:
        labels = {a: v for a, v in cell.labels.items() if a != SEED_AXIS}
        key = tuple(labels.items())
        arm = by_key.setdefault(key, Arm(labels))
        arm.cells.append(cell.id)
        seed_of[cell.id] = cell.labels.get(SEED_AXIS, str(cell.cfg.seed))
    owner = {c: arm for arm in by_key.values() for c in arm.cells}
    for r in rows:
        arm = owner.get(r["cell"])
        if arm is None or r["value"] is None:
            continue
        seed = seed_of[r["cell"]]
        (arm.cost if r["source"] == "cost" else arm.values).setdefault(r["metric"], {})[seed] = float(r["value"])
        if r["metric"] == RUN_METRIC and r.get("per_client"):
            arm.per_client[seed] = r["per_client"]
    found = list(by_key.values())
    ref = suite.reference()
    if ref is not None:
        axis, label = ref
        for arm in found:
            if arm.labels.get(axis) == label:
                continue
            twin = by_key.get(tuple({**arm.labels, axis: label}.items()))
            if twin is not None:
                arm.reference, arm.vs_reference = twin.name, compare(arm, twin)
    return found


def compare(arm: Arm, ref: Arm) -> PairedComparison | None:
    """The arm's held-out loss minus the reference's, paired by client and seed; None without a pair."""
    seeds = sorted(set(arm.per_client) & set(ref.per_client))
    clients = sorted(set.intersection(*(set(arm.per_client[s]) & set(ref.per_client[s]) for s in seeds))) if seeds else []
    if not clients:
        return None
    a = {c: [arm.per_client[s][c] for s in seeds] for c in clients}
    b = {c: [ref.per_client[s][c] for s in seeds] for c in clients}
    return paired_comparison(a, b)


def metric_names(found: list[Arm]) -> list[str]:
    """The quality metrics the arms have: held-out loss first, then the eval columns (cost is apart)."""
    seen = list(dict.fromkeys(m for arm in found for m in arm.values))
    return sorted(seen, key=lambda m: m != RUN_METRIC)


def _fmt(values: dict[str, float], metric: str) -> str:
    if not values:
        return "-"
    mean, std = seed_stats(values.values())
    digits = 4 if metric == RUN_METRIC else 2 if abs(mean) < 1e4 else 0
    text = f"{mean:.{digits}f}" if digits else f"{mean:.3g}"
    if math.isfinite(std):
        text += f" ± {std:.{digits}f}" if digits else f" ± {std:.2g}"
    return text


def seed_stats(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for one seed) over seeds."""
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else float("nan")


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for testing them together (same order as given): the
    i-th smallest becomes max over j <= i of min(1, (m - j + 1) · p_(j)). It keeps the chance of any false
    "differs from the reference" among a suite's arms at the level, where the raw p-values do not."""
    m = len(p_values)
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def _versus(c: PairedComparison | None, adjusted: float | None) -> list[str]:
    if c is None:
        return ["", "", ""]
    lo, hi = c.client_ci
    mark = " *" if c.significant else ""
    return [f"{c.client_mean_diff:+.4f} ({lo:+.4f} … {hi:+.4f}){mark}", f"{c.p_value:.3g}",
            f"{adjusted:.3g}" if adjusted is not None else ""]


def table(suite: Suite, found: list[Arm], fmt: str, metrics: list[str] | None = None) -> str:
    """The suite's table: arm labels, then each metric (mean ± std over seeds, seeds counted), then the
    paired difference of held-out loss against the reference arm with its 95% interval and p."""
    metrics = metrics or metric_names(found)
    axes = [a for a in suite.axes if a != SEED_AXIS]
    ref = suite.reference()
    head = [*axes, "seeds", *("held-out loss" if m == RUN_METRIC else m for m in metrics)]
    tested = [arm for arm in found if arm.vs_reference is not None]
    adjusted = dict(zip(map(id, tested), holm([a.vs_reference.p_value for a in tested])))
    if ref is not None:
        head += [f"Δ held-out vs {ref[1]} (95% CI)", "p", f"p, Holm over {len(tested)}"]
    out = []
    for arm in found:
        n = max((len(v) for v in arm.values.values()), default=0)
        row = [*(arm.labels[a] for a in axes), str(n), *(_fmt(arm.values.get(m, {}), m) for m in metrics)]
        if ref is not None:
            row += (_versus(arm.vs_reference, adjusted.get(id(arm))) if arm.labels.get(ref[0]) != ref[1]
                    else ["(reference)", "", ""])
        out.append(row)
    return render(head, out, fmt, left=len(axes))


AttributeResults = tuple[dict[str, dict[str, tuple[float, int]]], str]  # arm -> value -> (mean, clients); why none


def attribute_results(suite: Suite, found: list[Arm]) -> AttributeResults:
    """:func:`by_attribute`, or ({}, why) where it cannot be had: the table and page still render."""
    try:
        return by_attribute(suite, found), ""
    except Exception as e:  # noqa: BLE001 - a missing dataset or attribute leaves this table out, nothing else
        return {}, f"per-{suite.spec.report_by} results left out: {e}"


def by_attribute(suite: Suite, found: list[Arm]) -> dict[str, dict[str, tuple[float, int]]]:
    """Per arm and value of the suite's ``report_by`` client attribute (e.g. language): the mean final
    held-out loss of its clients over clients and seeds, and how many clients it has. Reads the
    federation for the attributes; raises what that raises (a missing dataset, an unknown attribute)."""
    from fedllm.data.groups import client_attribute
    from fedllm.runs import load_federation

    clients = sorted({c for arm in found for per in arm.per_client.values() for c in per})
    if not suite.spec.report_by or not clients:
        return {}
    value_of = client_attribute(load_federation(suite.cells[0].cfg), clients, suite.spec.report_by)
    return per_attribute(found, value_of)


def per_attribute(found: list[Arm], value_of: dict[str, str]) -> dict[str, dict[str, tuple[float, int]]]:
    """:func:`by_attribute` for a given client -> value map; clients without a value are left out."""
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for arm in found:
        losses: dict[str, list[float]] = {}
        clients: dict[str, set[str]] = {}
        for per in arm.per_client.values():
            for c, loss in per.items():
                if c in value_of:
                    losses.setdefault(value_of[c], []).append(loss)
                    clients.setdefault(value_of[c], set()).add(c)
        if losses:
            out[arm.name] = {g: (sum(v) / len(v), len(clients[g])) for g, v in sorted(losses.items())}
    return out


def attribute_table(per: dict[str, dict[str, tuple[float, int]]], fmt: str) -> str:
    """:func:`by_attribute`'s numbers as a table: an arm per row, an attribute value (its clients) per column."""
    values = sorted({g for groups in per.values() for g in groups})
    n = {g: max(groups[g][1] for groups in per.values() if g in groups) for g in values}
    rows = [[arm, *(f"{groups[g][0]:.4f}" if g in groups else "-" for g in values)] for arm, groups in per.items()]
    return render(["arm", *(f"{g} ({n[g]})" for g in values)], rows, fmt)


def paired_differences(series: dict[str, dict[str, list[tuple[int, float]]]],
                       twins: dict[str, str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """arm -> seed -> [(round, the arm's value minus its twin's at that round and seed)], for each arm
    of ``twins`` (arm -> its reference arm); rounds or seeds the twin lacks are left out."""
    out = {}
    for arm, twin in twins.items():
        theirs = {seed: dict(pts) for seed, pts in series[twin].items()}
        out[arm] = {seed: [(r, v - theirs[seed][r]) for r, v in pts if r in theirs.get(seed, {})]
                    for seed, pts in series[arm].items()}
    return out
