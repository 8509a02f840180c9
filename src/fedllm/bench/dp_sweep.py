"""FedLLM-Bench's differential-privacy sweep (its Figure 6) in kind: FedAvg at several ε with
δ = 1e-4, in the paper's mode (noise on each upload, nominal ε) and in DP-FedAvg (clipped updates,
noise on the sum, ε from an accountant), beside FedAvg without privacy (with full LoRA and with
FFA-LoRA, the default under DP) and the Local baseline. Every run is the quickstart's configuration
unless overridden; the table and plot are built from the run directories alone.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedllm.bench.quickstart import quickstart_configs
from fedllm.bench.report import load_run
from fedllm.config import RunConfig, build_config, config_fingerprint
from fedllm.jsonl import write_json_atomic
from fedllm.runs import RunError, read_run_config

EPSILONS = (1e-3, 1e-2, 0.1, 1.0)
DELTA = 1e-4
MODES = ("fedllm-bench", "dp-fedavg")


@dataclass
class Cell:
    """One run of the sweep: its configuration and where it stands in the table."""

    cfg: RunConfig
    mode: str  # "none" for the baselines
    epsilon: float | None
    label: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the cell could not run


def sweep_cells(output_dir: Path, overrides: list[str], epsilons: tuple[float, ...] = EPSILONS) -> list[Cell]:
    """The baselines and one run per (mode, ε), all from the quickstart's configuration."""
    fedavg, local = quickstart_configs(output_dir, ["eval.every=0", "eval.at_start=false", *overrides])
    data = fedavg.model_dump(mode="json")

    def variant(name: str, extra: dict[str, Any]) -> RunConfig:
        d = {**data, "name": name, "lora": {**data["lora"], **extra.get("lora", {})},
             "fl": {**data["fl"], **extra.get("fl", {})}}
        return build_config(d)

    cells = [Cell(local, "none", None, "Local"), Cell(fedavg, "none", None, "FedAvg"),
             Cell(variant("fedavg-ffa", {"lora": {"freeze_a": True}}), "none", None, "FedAvg, FFA-LoRA")]
    for mode in MODES:
        for eps in epsilons:
            dp = {"mode": mode, "epsilon": eps, "delta": DELTA}
            fl: dict[str, Any] = {"dp": dp}
            if mode == "dp-fedavg":  # the tightest accounting: Poisson sampling, PLD (certifies ε down to 1e-3)
                fl = {"sampling": "poisson", "dp": {**dp, "accountant": "pld"}}
            cells.append(Cell(variant(f"{mode}-eps{eps:g}", {"fl": fl}), mode, eps, f"{mode} ε={eps:g}"))
    return cells


def run_dp_sweep(output_dir: Path, overrides: list[str], console: Console,
                 epsilons: tuple[float, ...] = EPSILONS) -> Path:
    """Run (or reuse, when finished) every cell, then write results.json/.csv and the plot."""
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Session, Simulation
    from fedllm.eval.heldout import HeldoutEvaluator
    from fedllm.runs import load_federation

    cells = sweep_cells(output_dir, overrides, epsilons)
    local = cells[0]
    dataset = load_federation(local.cfg)
    sizes = {cid: dataset[cid].num_train for cid in dataset.client_ids}
    largest = max(sizes, key=lambda c: (sizes[c], c))
    local.cfg = build_config({**local.cfg.model_dump(mode="json"), "fl": {**local.cfg.model_dump(mode="json")["fl"],
                                                                           "local_client": largest}})
    sessions: dict[str, Session] = {}
    reporter = Reporter(console=console)
    for i, cell in enumerate(cells, 1):
        if finished(cell.cfg):
            console.print(f"[{i}/{len(cells)}] {cell.label}: finished before, reused")
        else:
            shutil.rmtree(cell.cfg.run_dir, ignore_errors=True)  # unfinished or configured otherwise: start over
            console.print(f"[{i}/{len(cells)}] {cell.label}")
            key = Session.key(cell.cfg)
            session = sessions.get(key) or sessions.setdefault(key, Session.create(cell.cfg))
            try:
                Simulation(cell.cfg, session=session, dataset=dataset, reporter=reporter,
                           evaluator=HeldoutEvaluator.from_config(cell.cfg.eval)).run()
            except RunError as e:  # e.g. an ε no accountant certifies: say so in the table, go on
                cell.error = str(e)
                console.print(f"  [yellow]not run:[/] {escape(str(e))}", highlight=False)
                continue
        cell.result = load_run(cell.cfg.run_dir)
    return write_sweep(cells, output_dir, console)


def finished(cfg: RunConfig) -> bool:
    """A cell whose run finished under this very configuration."""
    if not (cfg.run_dir / "summary.json").is_file():
        return False
    try:
        return config_fingerprint(read_run_config(cfg.run_dir)) == config_fingerprint(cfg)
    except RunError:
        return False


def rows(cells: list[Cell]) -> list[dict[str, Any]]:
    out = []
    for c in cells:
        s = c.result.get("summary", {})
        p = s.get("privacy") or {}
        out.append({"run": c.cfg.name, "label": c.label, "mode": c.mode, "target_epsilon": c.epsilon,
                    "delta": p.get("delta"), "epsilon": p.get("epsilon"), "guaranteed": p.get("epsilon") is not None,
                    "noise": p.get("sigma") if p.get("sigma") is not None else p.get("noise_multiplier"),
                    "accountant": p.get("accountant"), "sampling": p.get("sampling"),
                    "heldout_loss": (s.get("final_eval") or {}).get("pooled_loss"), "ffa_lora": c.cfg.ffa_lora,
                    "bytes_up": (s.get("cost") or {}).get("bytes_up"), "error": c.error})
    return out


def write_sweep(cells: list[Cell], output_dir: Path, console: Console) -> Path:
    table_rows = rows(cells)
    write_json_atomic(output_dir / "results.json", table_rows)
    with open(output_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(table_rows[0]))
        w.writeheader()
        w.writerows(table_rows)
    table = Table(title=f"Differential privacy sweep: held-out loss (lower is better), δ = {DELTA:g}",
                  caption="ε: from dp-accounting (dp-fedavg: Poisson sampling, PLD); fedllm-bench's ε is the paper's "
                          "nominal value (no clipping, no guarantee). noise: σ per entry (fedllm-bench) or z = σ/C "
                          "on the sum (dp-fedavg)")
    for col in ("run", "target ε", "ε guaranteed", "noise", "FFA", "held-out loss"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in table_rows:
        table.add_row(r["label"], "-" if r["target_epsilon"] is None else f'{r["target_epsilon"]:g}',
                      "-" if r["epsilon"] is None else f'{r["epsilon"]:.4g}',
                      "-" if r["noise"] is None else f'{r["noise"]:.3g}', "yes" if r["ffa_lora"] else "no",
                      "not run" if r["error"] else "-" if r["heldout_loss"] is None else f'{r["heldout_loss"]:.4f}')
    console.print(table)
    plot = plot_sweep(table_rows, output_dir / "dp_sweep.png")
    console.print(f"results: {output_dir / 'results.json'}, {output_dir / 'results.csv'}; plot: {plot}")
    return plot


def plot_sweep(table_rows: list[dict[str, Any]], out: Path) -> Path:
    """Held-out loss against ε (log scale), one panel per mode with its own loss scale (DP-FedAvg with
    few clients per round can sit far above the rest), the no-DP baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODES), figsize=(10, 4.2), dpi=120)
    baselines = [r for r in table_rows if r["mode"] == "none" and r["heldout_loss"] is not None]
    for ax, mode, marker in zip(axes, MODES, ("o", "s")):
        pts = sorted((r["target_epsilon"], r["heldout_loss"]) for r in table_rows
                     if r["mode"] == mode and r["heldout_loss"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color="C0" if marker == "o" else "C1",
                    label=f"FedAvg + {mode}")
        for r, style in zip(baselines, ("--", ":", "-.")):
            if math.isfinite(r["heldout_loss"]):
                ax.axhline(r["heldout_loss"], linestyle=style, color="gray", label=f'{r["label"]} (no DP)')
        ax.set_xscale("log")
        ax.set_xlabel("target ε (δ = 1e-4)")
        ax.set_title(mode + (": nominal ε, no guarantee" if mode == "fedllm-bench" else ": accounted ε (PLD)"), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out loss (pooled over all clients)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
