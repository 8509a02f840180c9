"""The main job: Local vs FedAvg on Fed-PyCode with the embedded model, both judged by held-out loss
on every client's test data ("federated beats local").

Same budget as in FedLLM-Bench: every participating client spends the same compute — the same
rounds, local steps, batch size and learning-rate schedule. Local trains one client alone; FedAvg
lets several clients train in parallel and averages what they learned.
"""

from __future__ import annotations

import dataclasses
import shutil
from importlib import resources
from pathlib import Path

from rich.console import Console

from fedllm.bench.report import comparison_rows, load_run, plot_heldout, print_comparison
from fedllm.config import RunConfig, load_config


def quickstart_configs(output_dir: Path, overrides: list[str]) -> tuple[RunConfig, RunConfig]:
    """(fedavg, local): the same per-client budget; Local is FedAvg's config with algorithm=local."""
    path = Path(str(resources.files("fedllm.bench").joinpath("quickstart.yaml")))
    common = [f"output_dir={output_dir}", *overrides]
    fedavg = load_config(path, ["name=fedavg", *common])
    local = load_config(path, ["name=local", "fl.algorithm=local", *common])
    return fedavg, local


def run_quickstart(output_dir: Path, overrides: list[str], console: Console) -> None:
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Session, Simulation
    from fedllm.eval.heldout import HeldoutEvaluator
    from fedllm.runs import load_federation

    fedavg_cfg, local_cfg = quickstart_configs(output_dir, overrides)
    for cfg in (fedavg_cfg, local_cfg):
        if cfg.run_dir.exists():
            shutil.rmtree(cfg.run_dir)
    console.print("[bold]fedllm quickstart[/]: Local vs FedAvg, embedded SmolLM2-135M-Instruct on Fed-PyCode")
    dataset = load_federation(fedavg_cfg)
    sizes = {cid: dataset[cid].num_train for cid in dataset.client_ids}
    largest = max(sizes, key=lambda c: (sizes[c], c))
    local_cfg = local_cfg.model_copy(update={"fl": dataclasses.replace(local_cfg.fl, local_client=largest)})
    console.print(f"  {len(sizes)} clients, {sum(sizes.values())} training samples; Local trains client "
                  f"[cyan]{largest}[/] ({sizes[largest]} samples) alone")
    session = Session.create(fedavg_cfg)
    console.print(f"  model {session.base.source} ({session.base.precision.name}), "
                  f"LoRA {session.slot.num_parameters():,} trainable parameters")
    reporter = Reporter(console=console)
    for cfg in (local_cfg, fedavg_cfg):
        Simulation(cfg, session=session, dataset=dataset, reporter=reporter,
                   evaluator=HeldoutEvaluator.from_config(cfg.eval)).run()
    runs = [load_run(local_cfg.run_dir), load_run(fedavg_cfg.run_dir)]
    rows = comparison_rows(runs)
    print_comparison(rows, console, title="Held-out loss on every client's test data (lower is better)")
    plot = plot_heldout(runs, output_dir / "heldout_loss.png")
    local_loss, fed_loss = rows[0]["heldout_loss"], rows[1]["heldout_loss"]
    verdict = "beats" if fed_loss < local_loss else "does NOT beat"
    console.print(f"FedAvg {verdict} Local on held-out data of all clients: {fed_loss:.4f} vs {local_loss:.4f}")
    console.print(f"plot: {plot}\nruns: {local_cfg.run_dir}, {fedavg_cfg.run_dir}  "
                  f"(compare again with `fedllm report {local_cfg.run_dir} {fedavg_cfg.run_dir}`)")
