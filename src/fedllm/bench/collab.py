"""Who should learn with whom (FedLLM-Bench's Table 6) in one command: Local, FedAvg, FedSamLang and
FedSimLang on one federation, each client judged on its own held-out data with the adapter it ends
up with, averaged per language (or per value of another client attribute).

Rows: Local (every client trains alone, the same rounds × local steps), FedAvg (one adapter for
all), FedSamLang (one per language) and FedSimLang (one per language family); for an attribute other
than language, one grouped row ("same <attribute>") replaces the two language rows. Columns: each
value of the attribute (the mean over its clients of their held-out loss) and their average, as in
the paper. Every row is a run under the output directory; finished ones are reused, interrupted
ones resumed.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedllm.bench.tables import render
from fedllm.bench.report import fairness_rows, load_run, print_fairness
from fedllm.config import RunConfig, load_config
from fedllm.jsonl import dumps, write_text_atomic


def collab_rows(by: str) -> list[tuple[str, str, list[str]]]:
    """(label, run name, overrides) of each row."""
    rows = [("Local", "local", ["groups.by=client", "fl.algorithm=local"]), ("FedAvg", "fedavg", [])]
    if by == "language":
        return rows + [("FedSamLang", "fedsamlang", ["groups.by=fedsamlang"]),
                       ("FedSimLang", "fedsimlang", ["groups.by=fedsimlang"])]
    return rows + [(f"Same {by}", f"by-{by}", [f"groups.by={by}"])]


def collab_configs(config: Path | None, output_dir: Path, overrides: list[str], by: str) -> list[tuple[str, RunConfig]]:
    return [(label, load_config(config, [*overrides, f"output_dir={output_dir}", f"name={name}", *extra]))
            for label, name, extra in collab_rows(by)]


def per_client_losses(run: dict[str, Any]) -> dict[str, float]:
    final = run["evals"][-1] if run["evals"] else {}
    return {c: r["loss"] for c, r in final.get("per_client", {}).items()}


def collab_table(losses: dict[str, dict[str, float]], attribute: dict[str, str]) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """(columns, row -> column -> mean client loss); the last column, "avg", is the mean over the others."""
    columns = sorted(set(attribute.values()))
    table: dict[str, dict[str, float | None]] = {}
    for label, per in losses.items():
        cells: dict[str, float | None] = {}
        for col in columns:
            vals = [per[c] for c, v in attribute.items() if v == col and c in per]
            cells[col] = statistics.fmean(vals) if vals else None
        present = [v for v in cells.values() if v is not None]
        cells["avg"] = statistics.fmean(present) if present else None
        table[label] = cells
    return [*columns, "avg"], table


def format_table(columns: list[str], table: dict[str, dict[str, float | None]], fmt: str) -> str:
    """The table as Markdown, LaTeX or CSV."""
    if fmt == "csv":
        rows = [[label, *("" if cells[c] is None else f"{cells[c]:.6f}" for c in columns)] for label, cells in table.items()]
        return render(["method", *columns], rows, fmt)
    cell = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [[label, *(cell(cells[c]) for c in columns)] for label, cells in table.items()]
    return render(["Method" if fmt == "latex" else "method", *columns], rows, fmt)


def run_collab(config: Path | None, output_dir: Path, overrides: list[str], console: Console,
               by: str = "language") -> dict[str, Any]:
    """Train (or reuse) every row's run, then print and write the table (table.md/.csv/.tex, results.json)."""
    from fedllm.data.groups import client_attribute
    from fedllm.data.schema import DataError
    from fedllm.engine.groups import GroupedRun
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Session, Simulation
    from fedllm.eval.heldout import HeldoutEvaluator
    from fedllm.runs import GROUPS, SUMMARY, RunError, load_federation, run_clients, started

    configs = collab_configs(config, output_dir, overrides, by)
    base = configs[1][1]
    dataset = load_federation(base)
    ids = run_clients(base, dataset)
    try:
        attribute = client_attribute(dataset, ids, by)
    except DataError as e:
        raise RunError(str(e)) from None
    console.print(f"[bold]fedllm collab[/]: who learns with whom on {base.data.dataset} ({len(ids)} clients, "
                  f"{len(set(attribute.values()))} values of {by}); runs under {output_dir}")
    session = Session.create(base)
    reporter = Reporter(console=console)
    runs = {}
    for label, cfg in configs:
        d = cfg.run_dir
        evaluator = lambda c=cfg: HeldoutEvaluator.from_config(c.eval)  # noqa: E731
        if cfg.groups.enabled:
            console.print(f"[bold]{label}[/] ({cfg.groups.by}: one adapter per group)")
            GroupedRun(cfg, session=session, dataset=dataset, reporter=reporter, evaluator=evaluator).run(
                resume=(d / GROUPS).is_file())
        elif (d / SUMMARY).is_file():
            console.print(f"[bold]{label}[/]: finished earlier ({d})")
        else:
            console.print(f"[bold]{label}[/]")
            Simulation(cfg, session=session, dataset=dataset, reporter=reporter, evaluator=evaluator()).run(
                resume=started(d))
        runs[label] = load_run(d)
    losses = {label: per_client_losses(run) for label, run in runs.items()}
    columns, table = collab_table(losses, attribute)
    # in the terminal a row per value (many languages do not fit across); the files keep the paper's shape
    out = Table(title=f"Held-out loss per {by} (mean over its clients' own test data; lower is better)",
                box=box.SIMPLE_HEAD, caption="each client is judged with the adapter it ends up with: its own (Local), "
                                             "the global one (FedAvg) or its group's; avg: mean over the rows above")
    out.add_column(by)
    for label in table:
        out.add_column(label, justify="right", no_wrap=True)
    for col in columns:
        vals = [table[label][col] for label in table]
        best = min((v for v in vals if v is not None), default=None)
        out.add_row(col, *("-" if v is None else (f"[bold]{v:.4f}[/]" if v == best else f"{v:.4f}") for v in vals),
                    end_section=col == columns[-2])
    console.print(out)
    print_fairness(fairness_rows(list(runs.values())), console)
    output_dir.mkdir(parents=True, exist_ok=True)
    for ext, fmt in (("md", "markdown"), ("csv", "csv"), ("tex", "latex")):
        write_text_atomic(output_dir / f"table.{ext}", format_table(columns, table, fmt))
    result = {"by": by, "columns": columns, "table": table, "attribute": attribute,
              "runs": {label: str(run["dir"]) for label, run in runs.items()}, "per_client": losses}
    write_text_atomic(output_dir / "results.json", dumps(result, indent=1))
    console.print(f"table: {output_dir / 'table.md'} (also .csv, .tex); per client: {output_dir / 'results.json'}")
    return result
