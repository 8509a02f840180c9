"""Running the configurations of a `fedllm hpo` study: the validation split, and a trainer that
trains, resumes or reads back one run at a time on a shared base model, telling the study about every
evaluation as it happens."""

from __future__ import annotations

import gc
import json
import math
import random
from collections.abc import Callable
from typing import Any

from fedllm.config import RunConfig, config_fingerprint
from fedllm.data.schema import ClientData, FederatedDataset
from fedllm.engine.progress import Reporter
from fedllm.runs import SUMMARY, RunError, started
from fedllm.seeding import derive_seed


def validation_split(dataset: FederatedDataset, fraction: float, seed: int) -> tuple[FederatedDataset, FederatedDataset]:
    """(search, final) federations: both train on each client's training samples less a seeded
    ``fraction`` of them; search's test split is that share (the validation set), final's is the
    client's own test split. ``fraction`` 0: the dataset itself, twice."""
    if fraction <= 0:
        return dataset, dataset

    def carve(cid: str) -> tuple[ClientData, list[Any], list[Any]]:
        """(client, validation samples, the training samples left)."""
        c = dataset[cid]
        n = len(c.train)
        k = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        held = set(random.Random(derive_seed(seed, "hpo-validation", cid)).sample(range(n), k))
        return (c, [s for i, s in enumerate(c.train) if i in held],
                [s for i, s in enumerate(c.train) if i not in held])

    def search(cid: str) -> ClientData:
        c, val, rest = carve(cid)
        return ClientData(c.id, train=rest, test=val, meta=c.meta)

    def final(cid: str) -> ClientData:
        c, _, rest = carve(cid)
        return ClientData(c.id, train=rest, test=c.test, meta=c.meta)

    ids = dataset.client_ids
    return (FederatedDataset(dataset.name, {c: (lambda c=c: search(c)) for c in ids}, dataset.meta),
            FederatedDataset(dataset.name, {c: (lambda c=c: final(c)) for c in ids}, dataset.meta))


class Stop(Exception):
    """Ends a trial's run early: pruned by the pruner, or failed (a loss that is not finite)."""

    def __init__(self, state: str, round_done: int, why: str = "") -> None:
        super().__init__(why)
        self.state, self.round_done, self.why = state, round_done, why


class _EvalHook(Reporter):
    """The run's reporter, plus a call after every held-out evaluation (round, row)."""

    def __init__(self, base: Reporter, on_eval: Callable[[int, dict[str, Any]], None]) -> None:
        super().__init__(console=base.console, quiet=base.quiet)
        self._on_eval = on_eval

    def eval(self, round_done: int, row: dict[str, Any]) -> None:
        super().eval(round_done, row)
        self._on_eval(round_done, row)


class Trainer:
    """Runs configurations one at a time: a finished run is read back, an interrupted one resumed; runs
    of the same model and adapter configuration share one loaded base model."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._session: Any = None
        self._key: str | None = None

    def _session_for(self, cfg: RunConfig) -> Any:
        from fedllm.engine.simulation import Session

        key = cfg.model.model_dump_json() + "|" + Session.key(cfg)
        if key != self._key:
            self.release()  # one base model in memory at a time
            self._session, self._key = Session.create(cfg), key
        return self._session

    def release(self) -> None:
        """Let the loaded base model go (before another is loaded)."""
        if self._session is not None:
            self._session = self._key = None
            gc.collect()

    def run(self, cfg: RunConfig, dataset: FederatedDataset,
            on_eval: Callable[[int, dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], bool]:
        """(summary, trained now): train, resume or read back ``cfg``'s run."""
        from fedllm.engine.simulation import Simulation
        from fedllm.eval.heldout import HeldoutEvaluator
        from fedllm.runs import read_run_config

        d = cfg.run_dir
        if (d / SUMMARY).is_file():
            if config_fingerprint(read_run_config(d)) != config_fingerprint(cfg):
                raise RunError(f"{d} holds a finished run of another configuration; move it away to re-run it")
            return json.loads((d / SUMMARY).read_text(encoding="utf-8")), False
        reporter = _EvalHook(self.reporter, on_eval) if on_eval else self.reporter
        sim = Simulation(cfg, session=self._session_for(cfg), dataset=dataset, reporter=reporter,
                         evaluator=HeldoutEvaluator.from_config(cfg.eval))
        return sim.run(resume=started(d)), True


def final_loss(summary: dict[str, Any]) -> float | None:
    """The pooled held-out loss of a run's last evaluation (None if absent or not finite)."""
    v = (summary.get("final_eval") or {}).get("pooled_loss")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
