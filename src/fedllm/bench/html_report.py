"""One self-contained HTML page for a suite: its table, plots (inline SVG), cost, failures and every
cell's resolved configuration. No scripts and nothing fetched: it opens from a file, offline."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedllm.bench import figures
from fedllm.bench.suite import RUN_METRIC, Suite
from fedllm.bench.suite_report import (SEED_AXIS, Arm, AttributeResults, arms, attribute_results, attribute_table,
                                      paired_differences, seed_stats, table)
from fedllm.bench.tables import render
from fedllm.config import dump_config

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9rem;margin:.2rem 0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e5e5e5;white-space:nowrap}th{background:#f6f6f6}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}td.l,th.l{text-align:left}
.caption{color:#555;font-size:.85rem;max-width:60rem}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}
details{margin:.2rem 0}summary{cursor:pointer;font-family:monospace}
pre{background:#f8f8f8;padding:.6rem;overflow:auto;font-size:.8rem}
.failed{color:#a00}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _history(cell_dir: Path) -> list[tuple[int, float]]:
    """(round, pooled held-out loss) of every evaluation a run (or grouped run) logged."""
    from fedllm.bench.report import load_run

    try:
        evals = load_run(cell_dir)["evals"]
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return []
    return [(e["round"], e["pooled_loss"]) for e in evals if e.get("pooled_loss") is not None]


def _curves(suite: Suite, found: list[Arm]) -> list[tuple[str, str]]:
    """The held-out loss per round per arm and, with a reference arm, each arm's difference from it
    under the same seed: seeds move every arm's level together (which held-out samples, which clients
    a round), so the paired curves show what the bands of the first hide."""
    seed_of = {c.id: c.labels.get(SEED_AXIS, str(c.cfg.seed)) for c in suite.cells}
    run_dir = {c.id: c.cfg.run_dir for c in suite.cells}
    series = {arm.name: {seed_of[c]: _history(run_dir[c]) for c in arm.cells} for arm in found}
    if not any(pts for seeds in series.values() for pts in seeds.values()):
        return []
    out = [("Held-out loss per round", figures.curves(
        series, "held-out loss (pooled over clients' test tokens)",
        "Held-out loss per round: mean over seeds, band from lowest to highest seed"))]
    ref = suite.reference()
    if ref is None:
        return out
    label = ref[1]
    diffs = paired_differences(series, {arm.name: arm.reference for arm in found if arm.reference})
    if any(pts for seeds in diffs.values() for pts in seeds.values()):
        out.append((f"Difference from {label} per round", figures.curves(
            diffs, f"held-out loss minus {label}'s (same seed)",
            f"Minus {label}'s under the same seed: mean over seeds, band: seed range",
            zero_line=True, colour_of={arm.name: i for i, arm in enumerate(found)})))
    return out


def _bytes_vs_quality(found: list[Arm]) -> str:
    pts = {}
    for arm in found:
        b, q = arm.cost.get("bytes_up", {}), arm.values.get(RUN_METRIC, {})
        if b and q:
            pts[arm.name] = [(seed_stats(b.values())[0] / 1e6, seed_stats(q.values())[0])]
    if len(pts) < 2:
        return ""
    return figures.xy(pts, "MB sent by clients (whole run)", "final held-out loss", "Message bytes against quality",
                      connect=False)


def _dp_curve(suite: Suite, found: list[Arm]) -> str:
    """Held-out loss against ε for arms whose cells set fl.dp.epsilon, one line per other setting."""
    eps_of = {c.id: c.cfg.fl.dp.epsilon for c in suite.cells if getattr(c.cfg.fl, "dp", None) is not None}
    lines: dict[str, list[tuple[float, float]]] = {}
    for arm in found:
        eps = {eps_of.get(c) for c in arm.cells} - {None}
        q = arm.values.get(RUN_METRIC, {})
        if len(eps) == 1 and q:
            mode = next(c.cfg.fl.dp.mode for c in suite.cells if c.id == arm.cells[0])
            lines.setdefault(str(mode), []).append((float(next(iter(eps))), seed_stats(q.values())[0]))
    if not any(len(v) > 1 for v in lines.values()):
        return ""
    return figures.xy(lines, "ε (log scale)", "final held-out loss", "Differential privacy: quality against ε", log_x=True)


def _group_section(attr: str | None, per: dict[str, dict[str, tuple[float, int]]], note: str) -> str:
    """Held-out loss per client attribute (``report_by``, e.g. language) per arm: bars and their table."""
    if not attr or not (per or note):
        return ""
    head = f"<h2>Per {_esc(attr)}</h2>"
    if not per:
        return head + f'<p class="caption">{_esc(note)}</p>'
    svg = figures.bars({a: {g: v for g, (v, _) in groups.items()} for a, groups in per.items()},
                       "mean held-out loss of its clients", f"Held-out loss per {attr}")
    return (head + f"<figure>{svg}</figure>" + attribute_table(per, "html") + f'<p class="caption">the final held-out '
            f"loss of the clients of each {_esc(attr)} (their number in brackets), averaged over clients and seeds</p>")


def _cost_table(found: list[Arm]) -> str:
    cols = (("train_seconds", "train s", 1, 0), ("local_steps", "steps", 1, 0), ("train_flops", "TFLOPs", 1e-12, 2),
            ("bytes_up", "MB up", 1e-6, 1), ("bytes_down", "MB down", 1e-6, 1))
    rows = []
    for arm in found:
        row = [arm.name]
        for key, _, scale, digits in cols:
            v = arm.cost.get(key, {})
            row.append(f"{seed_stats(v.values())[0] * scale:.{digits}f}" if v else "-")
        rows.append(row)
    return render(["arm", *(c[1] for c in cols)], rows, "html")


def suite_page(suite: Suite, rows: list[dict[str, Any]], failures: dict[str, str],
               by_attr: AttributeResults | None = None) -> str:
    """The page; ``by_attr``: :func:`attribute_results` when the caller already has it."""
    found = arms(suite, rows)
    spec = suite.spec
    versions = sorted({r["code_version"] for r in rows} - {""})
    done = len({r["cell"] for r in rows if r["metric"] == RUN_METRIC})
    parts = [f"<h1>fedllm bench: {_esc(spec.name)}</h1>", f"<p>{_esc(spec.description)}</p>"]
    if spec.paper:
        parts.append(f'<p class="meta">reproduces: {_esc(spec.paper)}</p>')
    parts.append(f'<p class="meta">{done} of {len(suite.cells)} cells finished · metrics: {_esc(", ".join(spec.metrics))}'
                 f' · code: {_esc(", ".join(versions) or "-")} · written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>')
    ref = suite.reference()
    caption = ("mean ± sample standard deviation over seeds. " if SEED_AXIS in suite.axes else "") + (
        f"Δ held-out: the arm's final held-out loss minus {ref[1]}'s, per client under the same seed, averaged over "
        "seeds; 95% t interval over clients and a two-sided sign-flip test over clients; * marks an interval that "
        "excludes 0 (negative: better than the reference). The last column adjusts the p-values for testing every arm "
        "against the reference at once (Holm): read a difference as shown by the suite only where it is small." if ref else "")
    parts += ["<h2>Results</h2>", table(suite, found, "html"), f'<p class="caption">{_esc(caption)}</p>']
    for title, svg in (*_curves(suite, found),
                       ("Message bytes against quality", _bytes_vs_quality(found)),
                       ("Differential privacy", _dp_curve(suite, found))):
        if svg:
            parts += [f"<h2>{_esc(title)}</h2>", f"<figure>{svg}</figure>"]
    parts.append(_group_section(spec.report_by, *(by_attr or attribute_results(suite, found))))
    parts += ["<h2>Cost</h2>", _cost_table(found),
              '<p class="caption">means over seeds; TFLOPs: the analytic training estimate; MB: message bytes</p>']
    if failures:
        parts.append("<h2>Failed cells</h2><ul>" + "".join(f'<li class="failed"><code>{_esc(c)}</code>: {_esc(w)}</li>'
                                                           for c, w in failures.items()) + "</ul>")
    parts.append("<h2>Configurations</h2>")
    parts += [f"<details><summary>{_esc(c.id)} ({_esc(c.config_hash)})</summary><pre>{_esc(dump_config(c.cfg))}</pre></details>"
              for c in suite.cells]
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>fedllm bench: {_esc(spec.name)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_suite_report(suite: Suite, rows: list[dict[str, Any]], out: Path,
                       by_attr: AttributeResults | None = None) -> Path:
    """``out/report.html`` (atomically), from the results store's rows and the cells' run directories."""
    from fedllm.jsonl import write_text_atomic

    path = out / "failures.json"
    failures = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    page = out / "report.html"
    write_text_atomic(page, suite_page(suite, rows, failures, by_attr))
    return page
