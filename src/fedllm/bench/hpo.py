"""Federated hyper-parameter optimisation (FederatedScope-LLM's FedHPO, its Figure 5b) in one command:
search a space at low fidelity (few rounds, judged by validation loss), re-train the configurations
at full fidelity, and say how well the two rankings agree (Spearman's ρ, Kendall's τ).

A study lives in one directory: ``study.json`` (what it searches, so a changed setting is refused),
``optuna.journal`` (Optuna's journal storage: trials, parameters, per-round values), one run
directory per trial under ``trials/<NNN>/`` and per re-trained configuration under
``final-r<R>/<NNN>/``, and the table (``table.md``, ``table.csv``) with ``results.json``.

Validation: by default each client's training samples lose a seeded share (``--val-fraction``) that
is the low-fidelity validation set; both fidelities train on the rest, and the final metric is
measured on the clients' test split, which the search never sees. ``--val-fraction 0`` instead
judges the search on the test split's held-out loss, as the final metric does.

Resumable at any point: finished trials are reused, a trial interrupted mid-run resumes from its
last checkpoint (``Simulation.run(resume=True)``), and a finished re-training is read back.
Samplers are reseeded per trial from (seed, trial number), so an interrupted study continues as one
never interrupted would.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from fedllm.bench.hpo_runs import Stop, Trainer, final_loss, validation_split
from fedllm.bench.hpo_samplers import PRUNERS, SAMPLERS
from fedllm.bench.hpo_space import SearchSpace, parse_space
from fedllm.bench.hpo_table import format_table, print_table, table_rows
from fedllm.bench.rankcorr import kendall_tau, spearman
from fedllm.config import ConfigError, RunConfig, config_diff, config_fingerprint, load_config
from fedllm.data.schema import DataError, FederatedDataset
from fedllm.engine.progress import Reporter
from fedllm.jsonl import dumps, write_text_atomic
from fedllm.runs import METRICS, RunError

STUDY_FILE = "study.json"
JOURNAL = "optuna.journal"
TRIALS = "trials"
#: what every run of a study starts from, before the user's overrides: the round-0 evaluation is the same
#: for every configuration, and a checkpoint per round lets an interrupted trial resume where it was
HPO_DEFAULTS = ("eval.at_start=false", "checkpoint.every=1")
DEFAULT_TRIALS = 10


@dataclass(frozen=True)
class HpoSettings:
    """A study's settings beyond its base configuration and search space."""

    sampler: str = "tpe"
    trials: int | None = None  # None: the whole grid, or DEFAULT_TRIALS
    rounds: int = 2  # low fidelity
    final_rounds: int | None = None  # None: the base config's fl.rounds; 0: search only
    top: int | None = None  # re-train only the K best trials (None: all)
    pruner: str = "none"
    eta: int = 3  # successive halving's reduction factor
    val_fraction: float = 0.1
    metric: str = "heldout"
    seed: int = 0  # the sampler's
    data_dir: Path | None = None  # benchmark files for a --metric other than heldout

    def defining(self) -> dict[str, Any]:
        """What decides the trials themselves: a study resumed under other values would mix searches."""
        return {"sampler": self.sampler, "seed": self.seed, "rounds": self.rounds, "pruner": self.pruner,
                "eta": self.eta if self.pruner == "halving" else None, "val_fraction": self.val_fraction}


def hpo_base_config(config: Path | None, overrides: list[str]) -> RunConfig:
    """The configuration every trial starts from: the file, the study's defaults, the user's overrides."""
    cfg = load_config(config, [*HPO_DEFAULTS, *overrides])
    if cfg.groups.enabled:
        raise ConfigError("fedllm hpo searches plain federations; groups.by / groups.mapping (one adapter per "
                          "group) is not supported")
    return cfg


def check_settings(settings: HpoSettings, space: SearchSpace) -> int:
    """Validate the settings against the space; the number of trials the study will hold."""
    SAMPLERS.lookup(settings.sampler)
    PRUNERS.lookup(settings.pruner)
    if not 0 <= settings.val_fraction < 1:
        raise ConfigError(f"--val-fraction {settings.val_fraction}: expected a share in [0, 1)")
    if settings.metric != "heldout":
        from fedllm.eval.context import EvalError
        from fedllm.eval.metrics import METRICS

        try:
            metric = METRICS.lookup(settings.metric)
        except EvalError as e:  # one line with the known names
            raise ConfigError(f"--metric: {e}") from None
        if metric.needs_judge:
            raise ConfigError(f"--metric {settings.metric} needs an LLM judge; rank by a metric without one here, "
                              f"then judge the final runs with `fedllm eval`")
    if settings.sampler == "grid":
        size = space.grid_size()
        return min(settings.trials or size, size)
    return settings.trials or DEFAULT_TRIALS


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                    for k, v in params.items())


# ---------------------------------------------------------------------- the study
@dataclass
class HpoStudy:
    """One `fedllm hpo` study: its directory, settings, base configuration and space."""

    out: Path
    base: RunConfig
    space: SearchSpace
    settings: HpoSettings
    console: Console

    @property
    def final_rounds(self) -> int:
        return self.base.fl.rounds if self.settings.final_rounds is None else self.settings.final_rounds

    def trial_config(self, number: int, params: dict[str, Any], final: bool = False) -> RunConfig:
        """Trial ``number``'s configuration at low fidelity (its search run) or full fidelity."""
        if final:
            fixed = {"output_dir": str(self.out / f"final-r{self.final_rounds}"), "fl.rounds": self.final_rounds}
        else:
            fixed = {"output_dir": str(self.out / TRIALS), "fl.rounds": self.settings.rounds}
            if self.settings.pruner != "none":  # the pruner decides on every round's validation loss
                fixed["eval.every"] = 1
        return self.space.apply(self.base, params, {"name": f"{number:03d}", **fixed})

    # ----------------------------------------------------------------- files
    def check_or_record(self) -> None:
        """Write study.json, or refuse to continue a study that searched something else."""
        now = {"space": self.space.to_dict(), "settings": self.settings.defining(),
               "base_fingerprint": config_fingerprint(self.base), "base": self.base.model_dump(mode="json")}
        path = self.out / STUDY_FILE
        if path.is_file():
            then = json.loads(path.read_text(encoding="utf-8"))
            changes = [f"--{k.replace('_', '-')}: {then['settings'].get(k)!r} -> {v!r}"
                       for k, v in now["settings"].items() if then["settings"].get(k) != v]
            if then["space"] != now["space"]:
                changes.append("the search space")
            if then["base_fingerprint"] != now["base_fingerprint"]:
                diff = config_diff(then["base"], now["base"])
                changes.append("the base configuration (" + "; ".join(diff[:4]) + ("; …" if len(diff) > 4 else "") + ")")
            if changes:
                raise ConfigError(f"{self.out} holds a study with other settings ({', '.join(changes)}); use the "
                                  f"same ones to continue it, or another --out for a new study")
            return
        write_text_atomic(path, dumps(now, indent=1))

    # ----------------------------------------------------------------- low fidelity
    def search(self, study: Any, n_trials: int, trainer: Trainer, data: FederatedDataset) -> None:
        """Run the study's trials up to ``n_trials``: interrupted ones first (resumed), then new ones."""
        from optuna.trial import Trial, TrialState

        existing = study.get_trials(deepcopy=False)
        finished = [t for t in existing if t.state.is_finished()]
        if finished:
            self.console.print(f"{len(finished)} trial(s) finished earlier, reused")
        for t in existing:
            if t.state == TrialState.RUNNING:  # killed mid-run: continue the same trial, same parameters
                study.sampler = self._sampler(t.number)
                self._trial(study, Trial(study, t._trial_id), n_trials, trainer, data, resumed=True)
        while (k := len(study.get_trials(deepcopy=False))) < n_trials:
            study.sampler = self._sampler(k)
            self._trial(study, study.ask(), n_trials, trainer, data)

    def _sampler(self, number: int) -> Any:
        return SAMPLERS[self.settings.sampler](self.space, self.settings.seed, number)

    def _trial(self, study: Any, trial: Any, n_trials: int, trainer: Trainer, data: FederatedDataset,
               resumed: bool = False) -> None:
        from optuna.trial import TrialState

        params = self.space.suggest(trial)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        reported = set(frozen.intermediate_values)
        head = f"[{trial.number + 1}/{n_trials}] trial {trial.number:03d}{' (resumed)' if resumed else ''}: {fmt_params(params)}"
        self.console.print(f"[bold]{head}[/]", highlight=False)
        rounds = self.settings.rounds
        pruning = self.settings.pruner != "none"

        def on_eval(round_done: int, row: dict[str, Any], decide: bool = True) -> None:
            loss = row.get("pooled_loss")
            if not (isinstance(loss, (int, float)) and math.isfinite(loss)):
                raise Stop("fail", round_done, f"validation loss {loss} after round {round_done}")
            if round_done not in reported:
                trial.report(float(loss), round_done)
                reported.add(round_done)
            if decide and pruning and round_done < rounds and trial.should_prune():
                raise Stop("pruned", round_done)

        try:
            cfg = self.trial_config(trial.number, params)
            summary, trained = trainer.run(cfg, data, on_eval)
            if not trained:  # finished before the study learnt of it: its values from the run's files
                from fedllm.engine.metrics import read_metrics

                for e in read_metrics(cfg.run_dir / METRICS, "eval"):
                    on_eval(e["round"], e, decide=False)
            value = final_loss(summary)
            if value is None:
                raise Stop("fail", rounds, "no finite validation loss")
        except Stop as stop:
            if stop.state == "pruned":
                trial.set_user_attr("pruned_after", stop.round_done)
                study.tell(trial, state=TrialState.PRUNED)
                self.console.print(f"  pruned after round {stop.round_done} (successive halving)")
            else:
                self._fail(study, trial, stop.why)
            return
        except (ConfigError, RunError, DataError) as e:
            self._fail(study, trial, str(e))
            return
        trial.set_user_attr("run_dir", str(cfg.run_dir))
        study.tell(trial, value)
        self.console.print(f"  validation loss {value:.4f} after {rounds} round(s)")

    def _fail(self, study: Any, trial: Any, why: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("error", why)
        study.tell(trial, state=TrialState.FAIL)
        self.console.print(f"  [yellow]failed:[/] {why}", highlight=False)

    # ----------------------------------------------------------------- full fidelity
    def retrain(self, study: Any, trainer: Trainer, data: FederatedDataset) -> dict[int, dict[str, Any]]:
        """Re-train the chosen trials at full fidelity; trial number -> {run_dir, value | error}."""
        from optuna.trial import TrialState

        complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                          key=lambda t: (t.value, t.number))
        chosen = complete[: self.settings.top] if self.settings.top else complete
        out: dict[int, dict[str, Any]] = {}
        for i, t in enumerate(chosen, 1):
            params = self.space.decode(t.params)
            self.console.print(f"[bold][{i}/{len(chosen)}] full fidelity ({self.final_rounds} rounds), trial "
                               f"{t.number:03d}:[/] {fmt_params(params)}", highlight=False)
            try:
                cfg = self.trial_config(t.number, params, final=True)
                summary, trained = trainer.run(cfg, data)
            except (ConfigError, RunError, DataError) as e:
                out[t.number] = {"error": str(e)}
                self.console.print(f"  [yellow]failed:[/] {escape(str(e))}", highlight=False)
                continue
            if not trained:
                self.console.print(f"  finished earlier ({cfg.run_dir})")
            out[t.number] = {"run_dir": str(cfg.run_dir), "value": final_loss(summary)}
        return out

    def final_metric(self, finals: dict[int, dict[str, Any]], trainer: Trainer) -> tuple[str, bool]:
        """Fill each final run's metric value; (column name, lower is better)."""
        if self.settings.metric == "heldout":
            return "heldout_loss", True
        from fedllm.eval.metrics import get_metric
        from fedllm.eval.runner import EvalSettings, run_evaluation
        from fedllm.eval.target import resolve_targets

        column = get_metric(self.settings.metric).columns[0]
        done = {n: f for n, f in finals.items() if "run_dir" in f}
        if done:
            trainer.release()  # the evaluation loads its own copy of the base model
            targets = resolve_targets([f["run_dir"] for f in done.values()], out_root=self.out / "eval")
            rows = run_evaluation(targets, EvalSettings(metrics=[self.settings.metric], data_dir=self.settings.data_dir,
                                                        seed=self.base.seed), self.console)
            for f, row in zip(done.values(), rows):
                v = row.get(column)
                f["value"] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        return column, "loss" in column


def correlation(low: list[float], final: list[float], lower_is_better: bool) -> dict[str, Any]:
    """ρ and τ between the low-fidelity ranking (by validation loss) and the final ranking (best first
    on both sides, so 1 means the same order)."""
    oriented = final if lower_is_better else [-v for v in final]
    return {"n": len(low), "spearman": spearman(low, oriented) if len(low) >= 2 else None,
            "kendall": kendall_tau(low, oriented) if len(low) >= 2 else None}


def run_hpo(config: Path | None, space_path: Path | dict[str, Any], output_dir: Path, overrides: list[str],
            console: Console, settings: HpoSettings, quiet: bool = False) -> dict[str, Any]:
    """Search, re-train, compare: prints the table and writes table.md/.csv and results.json."""
    import optuna

    from fedllm.engine.rundir import RunLock
    from fedllm.runs import load_federation

    base = hpo_base_config(config, overrides)
    space = parse_space(space_path, base)
    n_trials = check_settings(settings, space)
    study_run = HpoStudy(output_dir, base, space, settings, console)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the study directory {output_dir} ({e.strerror or e}); choose another --out") from None
    lock = RunLock(output_dir)
    try:
        lock.acquire()
    except RunError:
        raise RunError(f"{output_dir} is in use by another `fedllm hpo`; wait for it, or use another --out") from None
    try:
        study_run.check_or_record()
        dataset = load_federation(base)
        search_data, final_data = validation_split(dataset, settings.val_fraction, base.seed)
        console.print(f"[bold]fedllm hpo[/]: {settings.sampler} search of {len(space.dimensions)} key(s) "
                      f"({', '.join(space.keys)}), {n_trials} trials x {settings.rounds} round(s)"
                      f"{', successive halving (η=' + str(settings.eta) + ')' if settings.pruner == 'halving' else ''}; "
                      f"study in {output_dir}")
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(output_dir / JOURNAL)))
        study = optuna.create_study(study_name="fedllm-hpo", storage=storage, direction="minimize",
                                    pruner=PRUNERS[settings.pruner](settings.eta),
                                    sampler=study_run._sampler(0), load_if_exists=True)
        trainer = Trainer(Reporter(console=console, quiet=quiet))
        study_run.search(study, n_trials, trainer, search_data)
        finals: dict[int, dict[str, Any]] = {}
        column, lower_better = "heldout_loss", True
        if study_run.final_rounds > 0:
            finals = study_run.retrain(study, trainer, final_data)
            column, lower_better = study_run.final_metric(finals, trainer)
        trainer.release()
        return _report(study_run, study, finals, column, lower_better)
    finally:
        lock.release()


def _report(s: HpoStudy, study: Any, finals: dict[int, dict[str, Any]], column: str, lower_better: bool) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    rows = table_rows(trials, s.space, finals, lower_better)
    paired = [r for r in rows if r["val_loss"] is not None and r["final"] is not None]
    corr = correlation([r["val_loss"] for r in paired], [r["final"] for r in paired], lower_better)
    picked = min(paired, key=lambda r: (r["val_loss"], r["trial"]), default=None)
    validation = (f"{s.settings.val_fraction:g} of each client's training samples (seeded), left out of training at "
                  f"both fidelities; the final metric is measured on the clients' test split"
                  if s.settings.val_fraction > 0 else
                  "the clients' test split (held-out loss): the same data as the final metric")
    final_name = f"{column}@{s.final_rounds}" if finals else None
    result = {"study": str(s.out), "settings": {**asdict(s.settings), "data_dir": str(s.settings.data_dir or "") or None,
                                                "final_rounds": s.final_rounds},
              "space": s.space.to_dict(), "validation": validation,
              "low_fidelity": f"validation loss after {s.settings.rounds} round(s)",
              "final_metric": {"name": final_name, "lower_is_better": lower_better} if finals else None,
              "correlation": corr, "trials": rows,
              "picked": None if picked is None else {"trial": picked["trial"], "final_rank": picked["final_rank"],
                                                     "of": len(paired)}}
    keys = s.space.keys
    low_name = f"val_loss@{s.settings.rounds}"
    write_text_atomic(s.out / "table.md", format_table(rows, keys, low_name, final_name, "markdown", corr))
    write_text_atomic(s.out / "table.csv", format_table(rows, keys, low_name, final_name, "csv", corr))
    write_text_atomic(s.out / "results.json", dumps(result, indent=1))
    print_table(rows, keys, low_name, final_name, corr, result["picked"], validation, s.console)
    s.console.print(f"table: {s.out / 'table.md'} (also .csv); everything: {s.out / 'results.json'}")
    return result
