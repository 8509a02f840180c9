"""The table of a `fedllm hpo` study: one row per trial (its values, low-fidelity validation loss and
rank, full-fidelity metric and rank), as Markdown, CSV and in the terminal."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedllm.bench.hpo_space import SearchSpace
from fedllm.bench.rankcorr import average_ranks
from fedllm.bench.tables import render


def _state(t: Any) -> str:
    name = t.state.name.lower()
    return {"complete": "complete", "pruned": "pruned", "fail": "failed", "running": "running"}.get(name, name)


def table_rows(trials: list[Any], space: SearchSpace, finals: dict[int, dict[str, Any]],
               lower_is_better: bool) -> list[dict[str, Any]]:
    """One row per Optuna trial; ranks are 1 for the best (ties share the mean rank)."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        state = _state(t)
        f = finals.get(t.number, {})
        rows.append({"trial": t.number, "params": space.decode(t.params), "state": state,
                     "pruned_after": t.user_attrs.get("pruned_after"), "error": t.user_attrs.get("error") or f.get("error"),
                     "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                     "val_loss": t.value if state == "complete" else None, "val_rank": None,
                     "final": f.get("value"), "final_rank": None,
                     "run_dir": t.user_attrs.get("run_dir"), "final_run_dir": f.get("run_dir")})
    _rank(rows, "val_loss", "val_rank", True)
    _rank(rows, "final", "final_rank", lower_is_better)
    return rows


def _rank(rows: list[dict[str, Any]], key: str, into: str, lower_is_better: bool) -> None:
    have = [r for r in rows if r[key] is not None]
    ranks = average_ranks([r[key] if lower_is_better else -r[key] for r in have])
    for r, k in zip(have, ranks):
        r[into] = k


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _rank_text(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def _with_rank(v: float | None, rank: float | None) -> str:
    return "-" if v is None else f"{v:.4f} ({_rank_text(rank)})"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


def _status(r: dict[str, Any]) -> str:
    if r["state"] == "pruned" and r["pruned_after"] is not None:
        return f"pruned @r{r['pruned_after']}"
    return r["state"]


def corr_line(corr: dict[str, Any]) -> str:
    if corr["spearman"] is None and corr["kendall"] is None:
        return f"rank correlation: needs at least 2 configurations with both numbers (have {corr['n']})"
    rho = "undefined" if corr["spearman"] is None else f"{corr['spearman']:.3f}"
    tau = "undefined" if corr["kendall"] is None else f"{corr['kendall']:.3f}"
    return f"Spearman ρ = {rho}, Kendall τ = {tau} between the two rankings ({corr['n']} configurations; 1: same order)"


def format_table(rows_in: list[dict[str, Any]], keys: list[str], low_name: str, final_name: str | None, fmt: str,
                 corr: dict[str, Any]) -> str:
    """Markdown (with the correlation line under it) or CSV."""
    if fmt == "csv":
        rows = []
        for r in rows_in:
            cells = [f"{r['trial']:03d}", *(_value(r["params"].get(k, "")) for k in keys), _status(r),
                     "" if r["val_loss"] is None else f"{r['val_loss']:.6f}", "" if r["val_rank"] is None else f"{r['val_rank']:g}"]
            if final_name:
                cells += ["" if r["final"] is None else f"{r['final']:.6f}", "" if r["final_rank"] is None else f"{r['final_rank']:g}"]
            rows.append(cells)
        return render(["trial", *keys, "status", low_name, "val_rank"] + ([final_name, "final_rank"] if final_name else []),
                      rows, fmt)
    rows = []
    for r in rows_in:
        cells = [f"{r['trial']:03d}", *(_value(r["params"].get(k, "")) for k in keys), _status(r), _num(r["val_loss"]),
                 _rank_text(r["val_rank"])]
        if final_name:
            cells += [_num(r["final"]), _rank_text(r["final_rank"])]
        rows.append(cells)
    table = render(["trial", *keys, "status", low_name, "rank"] + ([final_name, "final rank"] if final_name else []),
                   rows, fmt, left=len(keys) + 2)
    return table + ("\n" + corr_line(corr) + "\n" if final_name else "")


def print_table(rows: list[dict[str, Any]], keys: list[str], low_name: str, final_name: str | None,
                corr: dict[str, Any], picked: dict[str, Any] | None, validation: str, console: Console) -> None:
    """The table in the terminal: each number with its rank beside it, then the correlation."""
    table = Table(title="FedHPO: low-fidelity ranking vs full fidelity", box=box.SIMPLE_HEAD)
    table.add_column("trial")
    for key in keys:  # section over setting: narrow columns
        table.add_column(key.replace(".", ".\n", 1), overflow="fold")
    table.add_column("status")
    for col in (low_name, *([final_name] if final_name else [])):  # the header wraps at the spaces
        table.add_column(col.replace("@", " @") + " (rank)", justify="right")
    for r in rows:
        cells = [f"{r['trial']:03d}", *(_value(r["params"].get(k, "")) for k in keys), _status(r),
                 _with_rank(r["val_loss"], r["val_rank"])]
        if final_name:
            cells.append(_with_rank(r["final"], r["final_rank"]))
        table.add_row(*cells)
    console.print(table)
    console.print(f"validation: {validation}; rank 1 is the best", highlight=False)
    for r in rows:
        if r["error"]:
            console.print(f"  trial {r['trial']:03d}: {r['error']}", highlight=False)
    if final_name:
        console.print(corr_line(corr), highlight=False)
        if picked is not None:
            console.print(f"the low-fidelity pick, trial {picked['trial']:03d}, ranks {_rank_text(picked['final_rank'])} "
                          f"of {picked['of']} at full fidelity", highlight=False)
