"""The main job: Local vs FedAvg on Fed-PyCode with the embedded model, both judged by held-out loss
on every client's test data ("federated beats local").

Same budget as in FedLLM-Bench: every participating client spends the same compute — the same
rounds, local steps, batch size and learning-rate schedule. Local trains one client alone; FedAvg
lets several clients train in parallel and averages what they learned.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedllm.bench.paired import PairedComparison, describe, paired_comparison
from fedllm.bench.report import comparison_rows, load_run, plot_heldout, print_comparison, print_history
from fedllm.config import RunConfig, load_config
from fedllm.hashing import tensor_digest
from fedllm.jsonl import write_json_atomic
from fedllm.progress import progress_bar


TASKS = {"sft": "quickstart.yaml", "dpo": "quickstart-dpo.yaml"}
# held-out samples per client in the final paired comparison (92 of Fed-PyCode's 412): enough to separate FedAvg
# from Local on the quickstart (p ~ 0.002 over clients) in about half the time of 8 (benchmarks/RESULTS.md (c⁗))
PAIRED_SAMPLES = 4
PAIRED_FILE = "paired.json"


class SharedStart:
    """A held-out evaluator for runs that start from the same adapter on the same frozen model and test
    data (the quickstart's two runs): a run's first evaluation is read back when its adapter is, to the
    bit, the one an earlier run's first evaluation scored; everything else goes to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.first: tuple[str, dict[str, Any]] | None = None
        self.calls = 0

    def __getattr__(self, name: str) -> Any:  # client(), personal … as the inner evaluator has them
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare(self, *args: Any) -> None:
        self.inner.prepare(*args)
        self.calls = 0

    def __call__(self, model: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 1:
            return self.inner(model)
        digest = tensor_digest((n, p) for n, p in model.named_parameters() if p.requires_grad)  # the adapter
        if self.first is not None and self.first[0] == digest:
            return copy.deepcopy(self.first[1])
        res = self.inner(model)
        self.first = (digest, copy.deepcopy(res))
        return res


def paired_heldout(sim: Any, run_dirs: list[Path], per_client: int, console: Console) -> PairedComparison | None:
    """Score the final adapters of two runs (A, B) on the same held-out samples, one loss per sample, and
    compare them pairwise; None when ``per_client`` is 0. ``sim`` is a finished run that shares their model."""
    from fedllm.eval.heldout import HeldoutEvaluator, sample_losses
    from fedllm.models.adapters import load_adapter_state

    if per_client <= 0:
        return None
    slot, task, precision = sim.slot, sim.task, sim.session.base.precision
    ev = HeldoutEvaluator(sim.cfg.eval.batch_size, per_client)
    ev.prepare(task, precision, sim.fleet.tests(sim.client_ids))
    n = sum(len(f) for f in ev.features.values())
    losses = []
    with progress_bar(console, f"paired held-out evaluation ({n} samples, {len(ev.features)} clients)",
                      n * len(run_dirs)) as advance:
        for run_dir in run_dirs:
            slot.load(slot.trainable(slot.from_saved(load_adapter_state(run_dir / "adapter"))))
            losses.append(sample_losses(slot.model, task.objective, ev.features, task.pad_id, precision,
                                        ev.batch_size))
            advance(n)
    return paired_comparison(losses[0], losses[1])


def print_paired(c: PairedComparison, a: str, b: str, console: Console) -> None:
    """The paired comparison as a table row and the sentence that says what it means."""
    table = Table(title=f"Paired comparison on the same held-out samples ({a} − {b}; negative: {a} is better)",
                  caption="per-sample mean loss; the client CI and the sign-flip p treat clients as the independent unit")
    for col in ("samples", "clients", "mean Δ", "95% CI (samples)", "95% CI (clients)", "p (clients)", f"{a} better"):
        table.add_column(col, justify="right")
    table.add_row(str(c.n_samples), str(c.n_clients), f"{c.mean_diff:+.4f}",
                  f"{c.sample_ci[0]:+.4f} … {c.sample_ci[1]:+.4f}", f"{c.client_ci[0]:+.4f} … {c.client_ci[1]:+.4f}",
                  f"{c.p_value:.3g}", f"{c.a_better}/{c.n_samples}")
    console.print(table)
    console.print(describe(c, a, b))


def quickstart_configs(output_dir: Path, overrides: list[str], task: str = "sft") -> tuple[RunConfig, RunConfig]:
    """(fedavg, local): the same per-client budget; Local is FedAvg's config with algorithm=local."""
    path = Path(str(resources.files("fedllm.bench").joinpath(TASKS[task])))
    common = [f"output_dir={output_dir}", *overrides]
    fedavg = load_config(path, ["name=fedavg", *common])
    local = load_config(path, ["name=local", "fl.algorithm=local", *common])
    return fedavg, local


def run_quickstart(output_dir: Path, overrides: list[str], console: Console, task: str = "sft",
                   paired_samples: int = PAIRED_SAMPLES) -> None:
    """Train Local and FedAvg with the same budget, evaluate both on every client's held-out data, and
    say which wins: by held-out loss (sft) or by held-out reward accuracy (dpo), and whether the
    difference exceeds its noise (a paired comparison on up to ``paired_samples`` per client; 0: none)."""
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Session, Simulation
    from fedllm.eval.heldout import HeldoutEvaluator
    from fedllm.runs import load_federation

    fedavg_cfg, local_cfg = quickstart_configs(output_dir, overrides, task)
    for cfg in (fedavg_cfg, local_cfg):
        if cfg.run_dir.exists():
            shutil.rmtree(cfg.run_dir)
    what = "preference pairs from Fed-PyCode (DPO)" if task == "dpo" else "Fed-PyCode"
    console.print(f"[bold]fedllm quickstart[/]: Local vs FedAvg, embedded SmolLM2-135M-Instruct on {what}")
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
    evaluator = SharedStart(HeldoutEvaluator.from_config(fedavg_cfg.eval))  # both runs start alike: round 0 once
    sims = [Simulation(cfg, session=session, dataset=dataset, reporter=reporter, evaluator=evaluator)
            for cfg in (local_cfg, fedavg_cfg)]
    for sim in sims:
        sim.run()
    runs = [load_run(local_cfg.run_dir), load_run(fedavg_cfg.run_dir)]
    rows = comparison_rows(runs)
    paired = paired_heldout(sims[1], [fedavg_cfg.run_dir, local_cfg.run_dir], paired_samples, console)
    if task == "dpo":
        print_comparison(rows, console, title="Held-out preference pairs of every client (DPO)")
        print_history(runs, "reward_accuracy", "held-out reward accuracy by round (higher is better)", console)
        plot = plot_heldout(runs, output_dir / "reward_accuracy.png", metric="reward_accuracy",
                            title="Held-out reward accuracy (all clients' test pairs)")
        local, fed = rows
        verdict = "beats" if fed["heldout_loss"] < local["heldout_loss"] else "does NOT beat"
        console.print(f"FedAvg {verdict} Local on held-out preference pairs of all clients: DPO loss "
                      f"{fed['heldout_loss']:.4f} vs {local['heldout_loss']:.4f} (reward accuracy "
                      f"{fed['reward_accuracy']:.3f} vs {local['reward_accuracy']:.3f}, margin "
                      f"{fed['margin']:.3f} vs {local['margin']:.3f})")
    else:
        print_comparison(rows, console, title="Held-out loss on every client's test data (lower is better)")
        plot = plot_heldout(runs, output_dir / "heldout_loss.png")
        local_loss, fed_loss = rows[0]["heldout_loss"], rows[1]["heldout_loss"]
        verdict = "beats" if fed_loss < local_loss else "does NOT beat"
        console.print(f"FedAvg {verdict} Local on held-out data of all clients: {fed_loss:.4f} vs {local_loss:.4f}")
    if paired is not None:
        print_paired(paired, "FedAvg", "Local", console)
        write_json_atomic(output_dir / PAIRED_FILE, {"a": "fedavg", "b": "local", **paired.to_dict()})
    console.print(f"plot: {plot}\nruns: {local_cfg.run_dir}, {fedavg_cfg.run_dir}  "
                  f"(compare again with `fedllm report {local_cfg.run_dir} {fedavg_cfg.run_dir}`)")
