"""Comparison tables and plots built from run directories alone (summary.json, metrics.jsonl)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedllm.engine.metrics import read_metrics
from fedllm.fairness import compare, spread
from fedllm.runs import is_grouped


def load_run(run_dir: Path) -> dict[str, Any]:
    """A finished run (or grouped run) as the report reads it: its summary, its evaluations (with the
    global adapter's per-client numbers) and its last personal evaluation, if any."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (run not finished?)")
    summary = json.loads(summary_path.read_text())
    if is_grouped(run_dir):  # every client's numbers from its own group's adapter
        per = summary.get("per_client", {})
        evals = [{"round": summary["rounds"], **summary["final_eval"],
                  "per_client": {c: {"loss": r["loss"]} for c, r in per.items()}}]
        personal = {"per_client": {c: {"global": r["loss"], "personal": r["personal"]} for c, r in per.items()
                                   if "personal" in r}}
        return {"dir": run_dir, "summary": summary, "evals": evals, "personal": personal if personal["per_client"] else None}
    evals = read_metrics(run_dir / "metrics.jsonl", "eval")
    personal = read_metrics(run_dir / "metrics.jsonl", "personal")
    return {"dir": run_dir, "summary": summary, "evals": evals, "personal": personal[-1] if personal else None}


def fairness_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, the spread over clients of the final global adapter's held-out loss and, where the run
    kept personal adapters, of theirs (with how many clients they serve better than the global one)."""
    rows = []
    for run in runs:
        name = run["summary"]["name"]
        final = run["evals"][-1] if run["evals"] else {}
        glob = {c: r["loss"] for c, r in final.get("per_client", {}).items()}
        if glob:
            rows.append({"run": name, "model": "global", **spread(glob.values())})
        mine = (run.get("personal") or {}).get("per_client", {})
        if mine:
            own = {c: r["personal"] for c, r in mine.items()}
            ref = {c: r["global"] for c, r in mine.items()}
            kinds = sorted({r.get("adapter", "personal") for r in mine.values()})
            rows.append({"run": name, "model": "personal (" + ", ".join(kinds) + ")", **spread(own.values()),
                         **{f"vs_global_{k}": v for k, v in compare(own, ref).items()}})
    return rows


def print_fairness(rows: list[dict[str, Any]], console: Console) -> None:
    """The fairness view: how the per-client held-out loss spreads (lower is better)."""
    if not rows:
        return
    table = Table(title="Per-client held-out loss (fairness view)", box=box.SIMPLE_HEAD,
                  caption="worst 10%: mean loss of the worst ⌈n/10⌉ clients; better: clients whose personal "
                          "adapter has a lower loss than the global adapter on their own test data")
    for col in ("run", "model", "clients", "mean", "std", "worst 10%", "worst", "better"):
        text = col in ("run", "model")
        table.add_column(col, justify="left" if text else "right", no_wrap=not text, min_width=10 if text else None)
    for r in rows:
        better = f'{r["vs_global_better"]}/{r["vs_global_clients"]}' if "vs_global_better" in r else ""
        table.add_row(r["run"], r["model"], str(r.get("clients", 0)),
                      *(_num(r.get(k), 1, 3) for k in ("mean", "std", "worst_decile", "worst")), better)
    console.print(table)


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        s = run["summary"]
        final = run["evals"][-1] if run["evals"] else {}
        rows.append({
            "run": s["name"], "algorithm": s["algorithm"], "rounds": s["rounds"],
            "heldout_loss": final.get("pooled_loss", math.nan), "heldout_ppl": final.get("pooled_ppl", math.nan),
            "client_mean_loss": final.get("mean_client_loss", math.nan), "own_loss": final.get("own_loss"),
            "train_seconds": s.get("train_seconds", math.nan),
            **{k: (s.get("cost") or {}).get(k) for k in ("seconds_per_step", "tokens_per_s", "train_flops", "bytes_up")},
            "peak_rss_mb": s.get("peak_rss_mb"), "privacy": s.get("privacy"),
            "reward_accuracy": final.get("reward_accuracy"), "margin": final.get("margin"),
        })
    return rows


def time_to_target(run: dict[str, Any], target: float, metric: str = "pooled_loss") -> dict[str, Any]:
    """The first evaluation whose held-out ``metric`` is at most ``target``: its round, the simulated
    wall clock then (``systems:`` runs) and the bytes sent until then; ``reached`` False if none was."""
    name = run["summary"]["name"]
    hit = next((e for e in run["evals"] if e.get(metric) is not None and e[metric] <= target), None)
    if hit is None:
        return {"run": name, "reached": False, "round": None, "loss": None, "sim_clock": None, "bytes": None}
    path = Path(run["dir"]) / "metrics.jsonl"
    rounds = [e for e in read_metrics(path, "round") if e["round"] <= hit["round"]] if path.is_file() else []
    timed = "sim_clock" in run["summary"] and path.is_file()  # a systems: run (a grouped run's rounds are its groups')
    return {"run": name, "reached": True, "round": hit["round"], "loss": hit[metric],
            "sim_clock": (rounds[-1]["sim_clock"] if rounds else 0.0) if timed else None,
            "bytes": sum(e["bytes_up"] + e["bytes_down"] for e in rounds) if path.is_file() else None}


def print_time_to_target(rows: list[dict[str, Any]], target: float, console: Console) -> None:
    """Per run: when the held-out loss first reached the target, in simulated seconds, rounds and bytes."""
    table = Table(title=f"Time to held-out loss ≤ {target:g}",
                  caption="sim clock: simulated wall clock (systems:, slowest on-time client per round); "
                          "MB: messages up and down until then")
    for col in ("run", "round", "loss", "sim clock s", "MB"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        if not r["reached"]:
            table.add_row(r["run"], "not reached", "", "", "")
        else:
            table.add_row(r["run"], str(r["round"]), _num(r["loss"], 1, 4), _num(r["sim_clock"], 1, 1),
                          _num(r["bytes"], 1e-6, 1))
    console.print(table)


def print_history(runs: list[dict[str, Any]], metric: str, title: str, console: Console) -> None:
    """One row per evaluation round, one column per run: how a held-out number moved."""
    table = Table(title=title)
    table.add_column("round", justify="right")
    for run in runs:
        table.add_column(run["summary"]["name"], justify="right")
    rounds = sorted({e["round"] for run in runs for e in run["evals"]})
    for r in rounds:
        table.add_row(str(r), *(_num(next((e.get(metric) for e in run["evals"] if e["round"] == r), None), 1, 3)
                                for run in runs))
    console.print(table)


def plot_heldout(runs: list[dict[str, Any]], out: Path, title: str = "Held-out loss (all clients' test data)",
                 metric: str = "pooled_loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for run in runs:
        ev = run["evals"]
        if ev:
            name, alg = run["summary"]["name"], run["summary"]["algorithm"]
            ax.plot([e["round"] for e in ev], [e.get(metric) for e in ev], marker="o",
                    label=name if name == alg else f"{name} ({alg})")
    ax.set_xlabel("round")
    ax.set_ylabel({"pooled_loss": "held-out loss (token-weighted, pooled)",
                   "reward_accuracy": "held-out reward accuracy (pooled)"}.get(metric, metric))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


_COST_COLUMNS = (("seconds_per_step", 1, 2), ("tokens_per_s", 1, 0), ("train_flops", 1e-12, 1), ("bytes_up", 1e-6, 1),
                 ("peak_rss_mb", 1, 0))


def _num(v: Any, scale: float, digits: int) -> str:
    """A figure, or "-" where there is none (null in the files, or runs written before it was recorded)."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.{digits}f}"


def print_comparison(rows: list[dict[str, Any]], console: Console, title: str = "Held-out evaluation") -> None:
    """loss/ppl: token-weighted over all clients' test data; client mean: mean of per-client losses;
    own client: the Local baseline's loss on its own client's test data."""
    prefs = any(r.get("reward_accuracy") is not None for r in rows)
    if prefs:  # DPO: no perplexity; the reward statistics instead
        caption = ("loss: DPO loss pooled over all clients' test pairs; reward acc: share of pairs whose chosen "
                   "reply gets the higher reward; own client: Local on its own test data")
        cols = {"run": "run", "algorithm": "method", "rounds": "rounds", "heldout_loss": "loss",
                "reward_accuracy": "reward acc", "margin": "margin", "own_loss": "own client", "train_seconds": "train s"}
    else:
        caption = "loss, ppl: pooled over all clients' test tokens; own client: Local on its own test data"
        cols = {"run": "run", "algorithm": "method", "rounds": "rounds", "heldout_loss": "loss", "heldout_ppl": "ppl",
                "client_mean_loss": "client mean", "own_loss": "own client", "train_seconds": "train s"}
    digits = {"heldout_loss": 4, "heldout_ppl": 2, "client_mean_loss": 4, "own_loss": 4, "train_seconds": 0,
              "reward_accuracy": 3, "margin": 3}
    table = Table(title=title, caption=caption)
    for key, col in cols.items():
        table.add_column(col, justify="left" if key in ("run", "algorithm") else "right")
    for r in rows:
        table.add_row(*(str(r[k]) if k not in digits else _num(r.get(k), 1, digits[k]) for k in cols))
    console.print(table)
    private = [r for r in rows if r.get("privacy")]
    if private:
        dp = Table(title="Differential privacy (user level)",
                   caption="ε at δ from the run's accountant; fedllm-bench's ε is the paper's nominal value, not a guarantee")
        for col in ("run", "mode", "ε", "δ", "noise", "clip C"):
            dp.add_column(col, justify="left" if col in ("run", "mode") else "right")
        for r in private:
            p = r["privacy"]
            eps = _num(p.get("epsilon"), 1, 3) if p.get("epsilon") is not None else f'{p.get("nominal_epsilon")} (nominal)'
            noise = f'σ={p["sigma"]:.3g}' if p.get("sigma") is not None else f'z={p.get("noise_multiplier", 0):.3g}'
            dp.add_row(r["run"], p["mode"], eps, f'{p["delta"]:g}', noise, _num(p.get("clip"), 1, 3))
        console.print(dp)
    cost = Table(title="Training cost", caption="TFLOPs: analytic estimate; MB up: bytes of the messages clients sent")
    for col in ("run", "s/step", "tok/s", "TFLOPs", "MB up", "peak RSS MB"):
        cost.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        cost.add_row(r["run"], *(_num(r.get(k), scale, digits) for k, scale, digits in _COST_COLUMNS))
    console.print(cost)
