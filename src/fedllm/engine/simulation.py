"""The simulation engine: the server loop of a run, its clients reached through a transport.

Setup -> rounds -> save; resumable. Each round the server samples clients, sends each an
``Instruction`` and gets a ``Reply`` back as bytes (in-process: every client shares this process's
base model and adapter slot), passes the updates to the composed server (validation, aggregation,
server optimizer) and logs what happened. Evaluation is a callback the caller passes in.

Everything random is derived from (run seed, purpose, round, client), so a run resumed from a
checkpoint continues exactly as one never interrupted.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from safetensors import SafetensorError

from fedllm.config import ConfigError, RunConfig, build_config, config_diff, config_fingerprint, dump_config
from fedllm.data.schema import POOLED, FederatedDataset, Sample
from fedllm.engine.checkpoint import load_latest, save_checkpoint
from fedllm.engine.client import ClientRuntime
from fedllm.engine.messages import Instruction
from fedllm.engine.metrics import MetricsLog, cost_summary, read_metrics
from fedllm.engine.personal import LocalPersonal, PersonalSpec, summarise
from fedllm.engine.progress import Reporter
from fedllm.engine.rundir import RunLock, remove_debris
from fedllm.engine.store import ClientStateStore, io_reason
from fedllm.engine.hetero_lora import rank_plan, server_model
from fedllm.engine.systems import apply_deadline, exchange_seconds, systems_summary
from fedllm.engine.fleet import Fleet, LocalFleet, TransportFactory
from fedllm.engine.transport import Exchange, Transport
from fedllm.fl import Algorithm, ClientUpdate, Federation, build_algorithm
from fedllm.fl.server import RoundOutcome
from fedllm.fl import state as S
from fedllm.fl.codec import lossless
from fedllm.fl.sampling import SAMPLERS
from fedllm.jsonl import dumps, write_text_atomic
from fedllm.models.adapters import AdapterSlot, save_adapter
from fedllm.models.merged_lora import save_merged_adapter
from fedllm.models.loading import BaseModel, load_base_model
from fedllm.models.offsite import Emulator, lora_layers
from fedllm.models.precision import Precision
from fedllm.runs import ADAPTER, CHECKPOINTS, CLIENT_STATE, CONFIG, METRICS, SUMMARY, RunError, load_federation
from fedllm.seeding import derive_seed
from fedllm.train.cost import peak_memory_mb
from fedllm.train.local import StepInfo
from fedllm.train.task import Task

__all__ = ["Evaluator", "RunError", "Session", "Simulation", "cosine_lr"]


def cosine_lr(round_idx: int, rounds: int, lr: float, lr_min: float) -> float:
    """Learning rate of round ``round_idx`` (0-based): cosine from ``lr`` to ``lr_min`` over the rounds."""
    if rounds <= 1:
        return lr
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * round_idx / rounds))


@dataclass
class Session:
    """A base model with its adapter slot (the run's PEFT method), shared by every run of a process (loaded once)."""

    base: BaseModel
    slot: AdapterSlot
    lora_key: str
    emulator: Emulator | None = None  # offsite-tuning: the model clients train on

    @classmethod
    def create(cls, cfg: RunConfig) -> Session:
        from fedllm.models.adapters import attach_adapter, peft_method

        base = load_base_model(cfg.model)
        off = cfg.offsite
        try:
            base.model = attach_adapter(base.model, cfg, layers=lora_layers(base.model, off))
            emulator = Emulator(base.model, off.adapter_layers, off.drop_rate) if off.enabled else None
        except ValueError as e:
            raise RunError(str(e)) from None
        slot = AdapterSlot(base.model, freeze_a=cfg.ffa_lora, method=peft_method(cfg))
        return cls(base=base, slot=slot, lora_key=cls.key(cfg), emulator=emulator)

    @staticmethod
    def key(cfg: RunConfig) -> str:
        off = cfg.offsite
        lora = cfg.lora.model_dump_json(exclude={"hetero", "client_ranks"})  # the same slot serves any client ranks
        return (lora + cfg.peft.model_dump_json() + f"|ffa={cfg.ffa_lora}"
                + (f"|offsite={off.adapter_layers},{off.drop_rate}" if off.enabled else ""))

    def view(self) -> AbstractContextManager[Any]:
        """The model clients train: offsite-tuning's emulator while entered, else the full model."""
        return self.emulator() if self.emulator is not None else nullcontext()

    def offsite_report(self) -> dict[str, Any] | None:
        """Offsite-tuning's layers and message sizes (emulator download vs full model), or None when off."""
        return self.emulator.report(self.slot.every.values()) if self.emulator is not None else None

    def check(self, cfg: RunConfig) -> None:
        if self.key(cfg) != self.lora_key:
            raise RunError("a shared session must use one adapter configuration (PEFT method, LoRA settings, "
                           "FFA-LoRA, offsite-tuning's layers) for every run")


class Evaluator(Protocol):
    """The evaluation callback: prepared once with the run's task and its clients' test samples,
    then called with the model holding the global adapter; returns one row of numbers."""

    def prepare(self, task: Task, precision: Precision, tests: dict[str, list[Sample]]) -> None: ...

    def __call__(self, model: Any) -> dict[str, Any]: ...


class Simulation:
    def __init__(self, cfg: RunConfig, *, session: Session | None = None, dataset: FederatedDataset | None = None,
                 reporter: Reporter | None = None, evaluator: Evaluator | None = None,
                 transport: TransportFactory | None = None, fleet: Fleet | None = None,
                 allow_config_change: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.reporter = reporter or Reporter()
        self.evaluator = evaluator
        self._session = session
        self._dataset = dataset
        self._transport = transport  # the local fleet's transport (in-process by default)
        self._fleet = fleet  # where the clients are; default: the dataset, held here
        self.allow_config_change = allow_config_change

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self._fleet is None:
            dataset = self._dataset if self._dataset is not None else load_federation(cfg)
            self._fleet = LocalFleet(dataset, self._transport)
        self.fleet = self._fleet
        self.session = self._session or Session.create(cfg)
        self.session.check(cfg)
        self.slot = self.session.slot
        base = self.session.base
        self.task = Task.create(cfg.train.objective, cfg.data.template, base.tokenizer, cfg.data.max_length,
                                **cfg.objective_options())
        census = self.fleet.census(cfg, self.task)
        self.client_ids = census.ids
        self.dropped, self.excluded, self.drop_reasons = census.dropped, census.excluded, census.drop_reasons
        self.trainable_samples = census.total_trainable
        eligible = [c for c in self.client_ids if c not in self.excluded]
        self.warnings = cfg.warnings()
        federation = Federation(num_clients=max(len(eligible), 1), clients_per_round=cfg.fl.clients_per_round,
                                rounds=cfg.fl.rounds, total_samples=self.trainable_samples, lr=cfg.train.lr,
                                sampling=cfg.fl.sampling, seed=cfg.seed)
        try:
            self.algorithm: Algorithm = build_algorithm(cfg.fl, max(len(eligible), 1), federation,
                                                        rank_plan(cfg, self.client_ids))
        except ValueError as e:
            raise RunError(str(e)) from None
        if self.algorithm.single_client and cfg.fl.local_client == POOLED and POOLED not in self.client_ids:
            self.participants = [self._pool(eligible)]
        elif self.algorithm.single_client:
            self.participants = [self._resolve_local_client(cfg.fl.local_client)]
        else:
            self.participants = eligible
            if not eligible:
                raise RunError(f"no client of {cfg.data.dataset!r} has a trainable sample at data.max_length="
                               f"{cfg.data.max_length}; raise data.max_length")
            if cfg.fl.clients_per_round > len(eligible):
                raise RunError(f"fl.clients_per_round={cfg.fl.clients_per_round} exceeds the {len(eligible)} clients "
                               f"that can train{self._excluded_note()}; set fl.clients_per_round <= {len(eligible)}")
            try:
                self.algorithm.aggregator.check_count(cfg.fl.clients_per_round)
            except ValueError as e:
                raise RunError(f"fl.aggregator {self.algorithm.aggregator.name} with fl.clients_per_round="
                               f"{cfg.fl.clients_per_round}: {e}") from None
        if self.algorithm.merge is not None and (not isinstance(self.fleet, LocalFleet) or self.session.emulator):
            raise RunError("lora.hetero=flora runs in the simulation without offsite-tuning: the merged base lives "
                           "where the server evaluates it, not on deployed nodes or an emulator")
        if self.fleet.secure and (problem := self.algorithm.secure_sum_problem()):
            raise RunError(f"deploy.secagg: {problem}")
        if self.fleet.secure and cfg.systems is not None and cfg.systems.deadline is not None:
            raise RunError("deploy.secagg sums every reply, so systems.deadline cannot leave late clients out; "
                           "set systems.deadline=null")
        if (why := self.algorithm.method.adapter_problem(self.slot.read())) is not None:
            raise RunError(f"fl.algorithm={cfg.fl.algorithm} {why}")
        up = cfg.comm.up
        feedback = up.error_feedback and not lossless(up)
        keeps = self.algorithm.stateful_clients or feedback or cfg.personal.finetune_steps > 0
        self.store = ClientStateStore(self.run_dir / CLIENT_STATE) if keeps else None
        self.runtime = ClientRuntime(self.slot, self.task, base.precision, self.store, self.fleet.encodings,
                                     view=self.session.view)
        if self.evaluator is not None:
            self.evaluator.prepare(self.task, base.precision, self.fleet.tests(self.client_ids))
        self.personal = self._personal_evaluation()
        self.eval_emulator = self._emulator_evaluation()
        self.offsite = self.session.offsite_report()
        if self.offsite is not None and not self.offsite["dropped_layers"]:
            self.warnings.append(f"offsite.drop_rate={cfg.offsite.drop_rate} drops none of the model's middle layers "
                                 f"(it rounds to 0 of them): the emulator is the full model")
        self.adapter_bytes = S.num_bytes(self.slot.read())
        self.setup_seconds = time.perf_counter() - t0

    def _personal_evaluation(self) -> Callable[[S.State, int], dict[str, dict[str, Any]]] | None:
        """Per-client evaluation of personal adapters, where the method keeps them or clients fine-tune:
        here where this process holds the clients, else through an evaluator that reaches them."""
        cfg, alg = self.cfg, self.algorithm
        if alg.single_client or not (alg.personalised or cfg.personal.finetune_steps):
            return None
        spec = PersonalSpec(alg.client_method(), cfg.personal.finetune_steps, cfg.personal.lr or cfg.train.lr,
                            self._train_settings(), cfg.seed)
        one_client = getattr(self.evaluator, "client", None)
        if one_client is not None and self.fleet.tests(self.client_ids):
            return LocalPersonal(spec, self.runtime, one_client, self.fleet.client, self.participants)
        federated = getattr(self.evaluator, "personal", None)
        if federated is not None:
            return lambda state, round_done: federated(state, spec, round_done)
        self.reporter.warn("personal adapters are evaluated by the held-out evaluator, and this run has none; "
                           "it reports the global adapter only")
        return None

    def _emulator_evaluation(self) -> bool:
        """Whether evaluations also run on offsite-tuning's emulator: asked, and the evaluator evaluates the
        model it is given here (one with ``client``, as for personal evaluation), not on remote nodes."""
        if self.session.emulator is None or not self.cfg.offsite.eval_emulator or self.evaluator is None:
            return False
        if getattr(self.evaluator, "client", None) is None:
            self.reporter.warn("offsite.eval_emulator: this run's evaluator runs on the nodes, which hold the full "
                               "model; only the plug-in (full model) loss is reported")
            return False
        return True

    def _excluded_note(self) -> str:
        return f" ({len(self.excluded)} of {len(self.client_ids)} have no trainable sample)" if self.excluded else ""

    def _pool(self, eligible: list[str]) -> str:
        """fl.local_client=pooled: one client holding the training samples of every client that can train
        (the centralised baseline); evaluation still sees the federation's clients."""
        if not isinstance(self.fleet, LocalFleet):
            raise RunError("fl.local_client=pooled puts every client's data in one place, so it runs in the "
                           "simulation, not on deployed nodes")
        if not eligible:
            raise RunError(f"fl.local_client=pooled: no client of {self.cfg.data.dataset!r} has a trainable sample")
        self.fleet.dataset = self.fleet.dataset.with_pooled(eligible)  # every one of them has a usable sample
        return POOLED

    def _resolve_local_client(self, which: str | int) -> str:
        if isinstance(which, int):
            if not 0 <= which < len(self.client_ids):
                raise RunError(f"fl.local_client={which} is out of range: {len(self.client_ids)} clients")
            which = self.client_ids[which]
        elif which not in self.client_ids:
            raise RunError(f"fl.local_client={which!r} is not a client id (e.g. {self.client_ids[:3]})")
        if which in self.excluded:
            raise RunError(f"fl.local_client={which!r} cannot train: {self.excluded[which]}")
        return which

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train (or resume) the run; its directory is locked for the duration."""
        created = self._open_run_dir()
        lock = RunLock(self.run_dir)
        lock.acquire()
        try:
            if not resume and ((self.run_dir / CHECKPOINTS).exists() or (self.run_dir / METRICS).exists()):
                raise RunError(f"{self.run_dir} already holds a run; resume it with `fedllm train --resume "
                               f"{self.run_dir}` or choose another name (name=...)")
            if debris := remove_debris(self.run_dir):
                self.reporter.info(f"removed what an interrupted run left behind: {', '.join(debris)}")
            try:
                self._setup()
            except BaseException:
                if created:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            return self._run(resume)
        finally:
            lock.release()

    def _open_run_dir(self) -> bool:
        """Create the run directory; True if it did not exist. I/O problems are one clear RunError."""
        existed = self.run_dir.is_dir()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-probe.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RunError(f"cannot write the run directory {self.run_dir} ({e.strerror or e}: {e.filename or self.run_dir}); "
                           f"choose a writable output_dir=") from None
        return not existed

    def _run(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        ckpt_root = self.run_dir / CHECKPOINTS
        start_round, global_state = 0, None
        metrics = MetricsLog(self.run_dir / METRICS)
        timing = {"train_seconds": 0.0, "eval_seconds": 0.0}
        history: list[dict[str, Any]] = []
        ck = load_latest(ckpt_root, self.reporter.warn) if resume else None
        for w in self.warnings:
            self.reporter.warn(w)
        initial = self.slot.initial_state(derive_seed(cfg.seed, "lora-init"))  # also sets FFA-LoRA's frozen A
        if ck is not None:
            self._check_config(ck.info, ck.path)
            try:
                global_state = self.slot.trainable(ck.global_state)
            except KeyError as e:
                raise RunError(f"{ck.path / 'adapter.safetensors'} does not fit this run's adapter ({e})") from None
            start_round = ck.round
            self.algorithm.load_state_dict(ck.server_state)
            if self.store is not None:
                self.store.restore(ck.path / CLIENT_STATE)
            metrics.truncate(int(ck.info["metrics_offset"]))
            timing = ck.info.get("timing", timing)
            history = ck.info.get("history", [])
            self.reporter.info(f"resuming {self.run_dir} after round {start_round}")
        else:
            if self.store is not None:
                self.store.clear()
            metrics.truncate(0)
            self._write(CONFIG, dump_config(cfg))
            global_state = initial
            metrics.write("setup", clients=len(self.client_ids), participants=len(self.participants),
                          excluded=self.excluded, dropped_samples=self.dropped, drop_reasons=self.drop_reasons,
                          algorithm=self.algorithm.describe(), warnings=self.warnings,
                          adapter_parameters=self.slot.num_parameters(), adapter_bytes=self.adapter_bytes,
                          ffa_lora=bool(self.slot.frozen), offsite=self.offsite,
                          body_parameters=self.runtime.shape.body_params,
                          precision=self.session.base.precision.name, precision_why=self.session.base.precision.why,
                          device=str(self.session.base.device),
                          setup_seconds=self.setup_seconds)
            if self.dropped:
                why = "; ".join(f"{n}: {reason}" for reason, n in sorted(self.drop_reasons.items()))
                self.reporter.info(f"  {sum(self.dropped.values())} training samples of {len(self.dropped)} clients "
                                   f"are left out at data.max_length={cfg.data.max_length} ({why}; per client: the "
                                   f"setup event in {METRICS})")
            for cid, why in self.excluded.items():
                self.reporter.warn(f"client {cid} is left out of sampling: {why}")
            if (dp := self.algorithm.report().get("dp")) is not None:
                self.reporter.info(f"  differential privacy ({dp['mode']}): {dp['guarantee']}")
            if cfg.eval.at_start:
                history.append(self._evaluate(0, global_state, metrics, timing))
        rounds = cfg.fl.rounds
        with self.reporter.rounds(rounds, start_round, title=f"{cfg.name} ({cfg.fl.algorithm})") as progress:
            transport = self.fleet.transport(self.runtime, _StepBars(progress), cfg.comm.down)
            for r in range(start_round, rounds):
                global_state = self._round(r, global_state, transport, metrics, timing)
                done = r + 1
                if (cfg.eval.every and done % cfg.eval.every == 0) or done == rounds:
                    history.append(self._evaluate(done, global_state, metrics, timing))
                if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == rounds:
                    metrics.write("checkpoint", round=done)
                    info = {"metrics_offset": metrics.offset(), "timing": timing, "history": history,
                            "fingerprint": config_fingerprint(cfg), "config": cfg.model_dump(mode="json")}
                    save_checkpoint(ckpt_root, done, self.slot.full(global_state), self.algorithm.state_dict(),
                                    self.store, info, keep=cfg.checkpoint.keep)
                progress.advance()
        try:
            if self.algorithm.merge is not None and self.algorithm.merge.merged:  # FLoRA: ΔW as exact LoRA factors
                save_merged_adapter(self.slot, self.algorithm.merge.merged, self.run_dir / ADAPTER)
            else:
                save_adapter(self.slot, global_state, self.run_dir / ADAPTER)
        except (OSError, SafetensorError) as e:
            raise RunError(f"cannot save the final adapter to {self.run_dir / ADAPTER} ({io_reason(e)}); the last "
                           f"checkpoint is intact: free space, then `fedllm train --resume {self.run_dir}`") from None
        summary = self._summary(history, timing)
        self._write(SUMMARY, dumps(summary, indent=1))
        metrics.close()
        self.slot.load(global_state)
        self.final_state = global_state
        return summary

    def _write(self, name: str, text: str) -> None:
        """A whole file of the run directory, atomically; an I/O error is one RunError naming it."""
        try:
            write_text_atomic(self.run_dir / name, text)
        except OSError as e:
            raise RunError(f"cannot write {self.run_dir / name} ({io_reason(e)}); free space or fix the directory, "
                           f"then `fedllm train --resume {self.run_dir}`") from None

    def _check_config(self, info: dict[str, Any], path: Path) -> None:
        """Refuse to resume a run whose config.yaml was edited after the checkpoint (unless allowed)."""
        if "config" not in info:
            self.reporter.warn(f"{path.name} predates config fingerprints: edits to {CONFIG} since then cannot be detected")
            return
        try:  # resolved by today's code, so a key added since (with its default) is not a change
            then = build_config(info["config"]).model_dump(mode="json")
        except ConfigError:
            then = info["config"]
        now = self.cfg.model_dump(mode="json")
        changes = config_diff(then, now)
        if not changes:
            return
        listed = "; ".join(changes[:6]) + ("; …" if len(changes) > 6 else "")
        if not self.allow_config_change:
            raise RunError(f"{self.run_dir / CONFIG} differs from the configuration {path.name} was written with "
                           f"({listed}); restore it, or resume with --allow-config-change to continue under the new one")
        self.reporter.warn(f"resuming under a changed configuration: {listed}")

    # ------------------------------------------------------------------ one round
    def _instructions(self, r: int, sampled: list[str], global_state: S.State, lr: float) -> Iterator[Instruction]:
        alg = self.algorithm
        train = self._train_settings()
        payload = alg.client_payload(global_state)
        reply_wire = self.cfg.comm.up.model_dump()
        for cid in sampled:
            yield Instruction(round=r, client_id=cid, seed=self.cfg.seed, lr=lr, train=train, method=alg.client_method(cid),
                              adapter=global_state, payload=payload, transforms=alg.client_transforms(),
                              reply_wire=reply_wire)

    def _train_settings(self) -> dict[str, Any]:
        """The local-training settings every instruction carries (the dynamic rule's inputs included)."""
        t, fl = self.cfg.train, self.cfg.fl
        return {"local_steps": t.local_steps, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                "group_by_length": t.group_by_length, "optimizer": t.optimizer, "momentum": t.momentum,
                "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
                "dynamic": {"epochs": t.epochs, "rounds": fl.rounds, "clients_per_round": fl.clients_per_round,
                            "num_clients": len(self.participants)}}

    def _round(self, r: int, global_state: S.State, transport: Transport, metrics: MetricsLog,
               timing: dict[str, float]) -> S.State:
        cfg, alg = self.cfg, self.algorithm
        t0 = time.perf_counter()
        lr = cosine_lr(r, cfg.fl.rounds, cfg.train.lr, cfg.train.lr_min)
        if alg.single_client:
            sampled = self.participants
        else:
            sampled = SAMPLERS[cfg.fl.sampling](self.participants, cfg.fl.clients_per_round, cfg.seed, r)
        updates: list[ClientUpdate] = []
        losses: dict[str, float] = {}
        bytes_up = bytes_down = 0
        missing: list[str] = []
        times: dict[str, float] = {}  # simulated seconds per client (systems:)
        for ex in transport.run(self._instructions(r, sampled, global_state, lr)):
            bytes_up, bytes_down = bytes_up + ex.bytes_up, bytes_down + ex.bytes_down
            if ex.reply is None:
                missing.append(ex.client_id)
                metrics.write("missing", round=r + 1, client=ex.client_id, reason=ex.failure)
                self.reporter.warn(f"round {r + 1}: no update from client {ex.client_id}: {ex.failure}")
                continue
            if cfg.systems is not None:
                times[ex.client_id] = exchange_seconds(cfg.systems, cfg.seed, ex)
            self._log_client(r, ex, metrics, times.get(ex.client_id))
            updates.append(ex.reply.update)
            losses[ex.reply.update.client_id] = ex.reply.metrics["loss"]
        rank = {cid: i for i, cid in enumerate(sampled)}
        updates.sort(key=lambda u: rank.get(u.client_id, len(rank)))  # sampling order, whatever order replies came in
        clock: dict[str, Any] = {}
        if cfg.systems is not None:
            updates, clock = apply_deadline(cfg.systems, r + 1, updates, times, bool(missing), metrics,
                                            self.reporter.warn, timing)
        if updates and len(updates) < cfg.deploy.min_replies:
            outcome = RoundOutcome(state=None, skipped=f"{len(updates)} of {len(sampled)} clients replied, fewer "
                                                       f"than deploy.min_replies={cfg.deploy.min_replies}")
        elif not updates and missing:
            outcome = RoundOutcome(state=None, skipped=f"none of the {len(sampled)} sampled clients replied")
        elif not updates and clock.get("late"):
            outcome = RoundOutcome(state=None, skipped=f"all {len(clock['late'])} clients were later than "
                                                       f"systems.deadline={cfg.systems.deadline:g} s")
        elif self.fleet.secure:  # the server sees only the weighted mean, which the transport unmasked
            outcome = alg.step_secure(global_state, transport.secure_mean or {}, updates)
        else:
            outcome = alg.step(global_state, updates)
        for cid, why in outcome.dropped:
            metrics.write("drop", round=r + 1, client=cid, reason=why)
            self.reporter.warn(f"round {r + 1}: dropped the update of client {cid}: {why}")
        if outcome.skipped:
            self.reporter.warn(f"round {r + 1} skipped: {outcome.skipped}; the global adapter is unchanged")
        new_state = outcome.state if outcome.state is not None else global_state
        seconds = time.perf_counter() - t0
        timing["train_seconds"] += seconds
        n_loss = sum(u.num_seen for u in updates)
        metrics.write("round", round=r + 1, lr=lr, clients=sampled, missing=missing, aggregated=outcome.accepted,
                      dropped=len(outcome.dropped), skipped=outcome.skipped, seconds=seconds,
                      loss=sum(losses[u.client_id] * u.num_seen for u in updates) / max(n_loss, 1) if updates else None,
                      update_norm=S.norm(S.sub(new_state, global_state)), bytes_up=bytes_up, bytes_down=bytes_down,
                      **clock, **alg.report())
        return new_state

    def _log_client(self, r: int, ex: Exchange, metrics: MetricsLog, sim_seconds: float | None = None) -> None:
        m, u = dict(ex.reply.metrics), ex.reply.update
        if sim_seconds is not None:
            m["sim_seconds"] = sim_seconds
        for s, step in enumerate(m.pop("step_log", [])):
            metrics.write("step", round=r + 1, client=u.client_id, step=s + 1, lr=u.lr, **step)
        metrics.write("client", round=r + 1, client=u.client_id, lr=u.lr, **m, bytes_up=ex.bytes_up,
                      bytes_down=ex.bytes_down)

    # ------------------------------------------------------------------ evaluation and summary
    def _evaluate(self, round_done: int, global_state: S.State, metrics: MetricsLog, timing: dict[str, float]) -> dict[str, Any]:
        if self.evaluator is None:
            return {"round": round_done}
        t0 = time.perf_counter()
        self.slot.load(global_state)
        with server_model(self.slot.model, self.algorithm):  # FLoRA: the base plus the merged ΔW
            res = self.evaluator(self.slot.model)
        seconds = time.perf_counter() - t0
        timing["eval_seconds"] += seconds
        row = {"round": round_done, **res, "seconds": seconds}
        if self.eval_emulator:  # offsite-tuning: the same adapter on the emulator the clients trained on
            t0 = time.perf_counter()
            with self.session.view():
                emulated = self.evaluator(self.slot.model)
            timing["eval_seconds"] += time.perf_counter() - t0
            row["emulator"] = {k: v for k, v in emulated.items() if k != "per_client"}
            if "pooled_loss" in emulated:
                self.reporter.info(f"  [cyan]eval[/] after round {round_done} on the emulator (offsite-tuning): held-out "
                                   f"loss {emulated['pooled_loss']:.4f} (pooled); next line: the full model (plug-in)")
        if self.algorithm.single_client:
            own = res.get("per_client", {}).get(self.participants[0])
            row["own_loss"] = own["loss"] if own else None
        metrics.write("eval", **row)
        self.reporter.eval(round_done, row)
        out = {k: v for k, v in row.items() if k != "per_client"}
        if self.personal is not None and (round_done == self.cfg.fl.rounds or self.cfg.personal.every):
            t0 = time.perf_counter()
            mine = summarise(self.personal(global_state, round_done), res.get("per_client", {}))
            seconds = time.perf_counter() - t0
            timing["eval_seconds"] += seconds
            metrics.write("personal", round=round_done, **mine, seconds=seconds)
            g, p = mine["global"], mine["personal"]
            if p.get("clients"):
                self.reporter.info(f"  personal adapters (round {round_done}): mean client loss {p['mean']:.4f} "
                                   f"(global {g['mean']:.4f}), worst decile {p['worst_decile']:.4f} (global "
                                   f"{g['worst_decile']:.4f}); better for {mine['better']} of {mine['clients']} clients")
            out["personal"] = {k: v for k, v in mine.items() if k != "per_client"}
        return out

    def _summary(self, history: list[dict[str, Any]], timing: dict[str, float]) -> dict[str, Any]:
        cfg = self.cfg
        final = history[-1] if history else {}
        events = read_metrics(self.run_dir / METRICS)
        return {
            "name": cfg.name, "algorithm": cfg.fl.algorithm, "compat": cfg.fl.compat, "rounds": cfg.fl.rounds,
            "clients": len(self.client_ids), "participants": self.participants if self.algorithm.single_client else None,
            "excluded_clients": self.excluded, "final_eval": final, "eval_history": history, **timing,
            "precision": self.session.base.precision.name,
            "adapter_parameters": self.slot.num_parameters(), "adapter_bytes": self.adapter_bytes,
            "offsite": self.offsite,
            "privacy": self.algorithm.report().get("dp"),
            "personal": final.get("personal"),
            "dropped_updates": sum(1 for e in events if e["event"] == "drop"),
            "skipped_rounds": [e["round"] for e in events if e["event"] == "round" and e.get("skipped")],
            "cost": cost_summary([e for e in events if e["event"] == "client"]),
            "systems": systems_summary(cfg.systems, events) if cfg.systems is not None else None,
            **peak_memory_mb(self.session.base.device),
        }


class _StepBars:
    """Per-client progress bars driven by the client's step callback (in-process transports only)."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task: Any = None

    def __call__(self, client_id: str, info: StepInfo) -> None:
        if info.step == 0:
            self.task = self.progress.client(client_id, info.total)
        self.progress.step(self.task, info.loss)
        if info.step + 1 == info.total:
            self.progress.done(self.task)
