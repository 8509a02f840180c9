"""FederatedScope-LLM's Tables 2 and 4 in one command: the same federation trained with each PEFT method,
held-out loss beside the size of what clients send and receive.

Every method is a run under the output directory (finished ones are reused, interrupted ones resumed);
the table reports the trainable parameters, bytes per client and round (real serialised messages, both
directions), seconds per local step and the pooled held-out loss before the first round and after the last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedllm.bench.report import load_run
from fedllm.bench.tables import render
from fedllm.config import ConfigError, RunConfig, load_config
from fedllm.jsonl import dumps, write_text_atomic

DEFAULT_METHODS = ("lora", "dora", "ia3", "prompt", "ptuning", "prefix")
COLUMNS = ("method", "trainable_params", "share_of_model", "bytes_up", "bytes_down", "seconds_per_step",
           "start_loss", "final_loss")
#: the terminal's narrower headers
HEADERS = ("method", "params", "% body", "up/round", "down/round", "s/step", "loss@0", "loss")


def method_configs(config: Path | None, output_dir: Path, overrides: list[str],
                   methods: list[str]) -> list[tuple[str, RunConfig]]:
    """(method, config) of each row: the common configuration with ``peft.method`` set and the initial
    model evaluated too (``eval.at_start``)."""
    from fedllm.models.peft_methods import PEFT_METHODS

    unknown = [m for m in methods if m not in PEFT_METHODS]
    if unknown:
        raise ConfigError("--methods: " + "; ".join(PEFT_METHODS.unknown(m) for m in unknown))
    return [(m, load_config(config, [*overrides, f"output_dir={output_dir}", f"name={m}", f"peft.method={m}",
                                     "eval.at_start=true"])) for m in methods]


def table_row(method: str, run: dict[str, Any]) -> dict[str, Any]:
    """One row from a finished run's summary and evaluations."""
    from fedllm.engine.metrics import read_metrics

    s = run["summary"]
    evals = run["evals"]
    setup = read_metrics(Path(run["dir"]) / "metrics.jsonl", "setup")
    setup_body = setup[0].get("body_parameters") if setup else None
    cost = s.get("cost", {})
    return {"method": method, "trainable_params": s["adapter_parameters"],
            "share_of_model": s["adapter_parameters"] / setup_body if setup_body else None,
            "bytes_up": cost.get("bytes_up_per_client_round"), "bytes_down": cost.get("bytes_down_per_client_round"),
            "seconds_per_step": cost.get("seconds_per_step"),
            "start_loss": evals[0].get("pooled_loss") if evals and evals[0].get("round") == 0 else None,
            "final_loss": s["final_eval"].get("pooled_loss")}


def _cell(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in ("bytes_up", "bytes_down"):
        return f"{v / 1e3:.1f} kB" if v < 1e6 else f"{v / 1e6:.2f} MB"
    if key == "share_of_model":
        return f"{100 * v:.2f}%"
    if key == "trainable_params":
        return f"{v:,}"
    if key == "seconds_per_step":
        return f"{v:.2f}"
    return v if isinstance(v, str) else f"{v:.4f}"


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """The table as Markdown, LaTeX or CSV (CSV keeps raw numbers)."""
    if fmt == "csv":
        return render(list(COLUMNS), [["" if r[k] is None else str(r[k]) for k in COLUMNS] for r in rows], fmt)
    return render(list(COLUMNS), [[_cell(k, r[k]) for k in COLUMNS] for r in rows], fmt)


def run_peft_table(config: Path | None, output_dir: Path, overrides: list[str], console: Console,
                   methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) a run per method, then print and write the table (table.md/.csv/.tex, results.json)."""
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.eval.heldout import HeldoutEvaluator
    from fedllm.runs import SUMMARY, load_federation, started

    configs = method_configs(config, output_dir, overrides, list(methods or DEFAULT_METHODS))
    dataset = load_federation(configs[0][1])
    console.print(f"[bold]fedllm peft-table[/]: {len(configs)} PEFT methods on {configs[0][1].data.dataset}; runs "
                  f"under {output_dir}")
    reporter = Reporter(console=console)
    rows = []
    for method, cfg in configs:
        d = cfg.run_dir
        if (d / SUMMARY).is_file():
            console.print(f"[bold]{method}[/]: finished earlier ({d})")
        else:
            console.print(f"[bold]{method}[/]")
            Simulation(cfg, dataset=dataset, reporter=reporter, evaluator=HeldoutEvaluator.from_config(cfg.eval)).run(
                resume=started(d))
        rows.append(table_row(method, load_run(d)))
    out = Table(title="PEFT methods: held-out loss and message size (per client and round)", box=box.SIMPLE_HEAD,
                caption="start: the initial adapter (LoRA, DoRA and IA³ start at the base model exactly)")
    for c, h in zip(COLUMNS, HEADERS):
        out.add_column(h, justify="left" if c == "method" else "right", no_wrap=True)
    best = min((r["final_loss"] for r in rows if r["final_loss"] is not None), default=None)
    for r in rows:
        cells = [_cell(k, r[k]) for k in COLUMNS]
        if r["final_loss"] == best:
            cells[-1] = f"[bold]{cells[-1]}[/]"
        out.add_row(*cells)
    console.print(out)
    output_dir.mkdir(parents=True, exist_ok=True)
    for ext, fmt in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
        write_text_atomic(output_dir / f"table.{ext}", format_rows(rows, fmt))
    write_text_atomic(output_dir / "results.json", dumps({"rows": rows, "runs": {m: str(c.run_dir) for m, c in configs}},
                                                         indent=1))
    console.print(f"table: {output_dir / 'table.md'} (also .csv, .tex, results.json)")
    return rows
