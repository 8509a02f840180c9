"""The simulation engine: one base model per process, clients trained one after another in its
adapter slot, a server algorithm aggregating their updates. Setup -> rounds -> save; resumable.

Everything random is derived from (run seed, purpose, round, client), so a run resumed from a
checkpoint continues exactly as one never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedllm.config import RunConfig, dump_config, load_config
from fedllm.data.formatting import get_template
from fedllm.data.schema import FederatedDataset
from fedllm.engine.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fedllm.engine.metrics import MetricsLog, read_metrics
from fedllm.engine.progress import Reporter
from fedllm.engine.store import ClientStateStore
from fedllm.eval.cost import ModelShape, cost_summary, peak_memory_mb, serialized_bytes, train_flops
from fedllm.eval.heldout import HeldoutResult, evaluate_heldout
from fedllm.fl import Algorithm, ClientUpdate, build_algorithm
from fedllm.fl import state as S
from fedllm.fl.sampling import sample_uniform
from fedllm.jsonl import write_text_atomic
from fedllm.models.adapters import AdapterSlot, save_adapter
from fedllm.models.loading import BaseModel, load_base_model
from fedllm.seeding import derive_seed
from fedllm.train.batching import draw_round_batches, dynamic_local_steps
from fedllm.train.local import LocalTrainer, StepInfo
from fedllm.train.objectives import get_objective


class RunError(RuntimeError):
    """A run cannot start or resume as asked."""


def cosine_lr(round_idx: int, rounds: int, lr: float, lr_min: float) -> float:
    """Learning rate of round ``round_idx`` (0-based): cosine from ``lr`` to ``lr_min`` over the rounds."""
    if rounds <= 1:
        return lr
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * round_idx / rounds))


@dataclass
class Session:
    """A base model with its LoRA slot, shared by every run of a process (loaded once)."""

    base: BaseModel
    slot: AdapterSlot
    lora_key: str

    @classmethod
    def create(cls, cfg: RunConfig) -> Session:
        from fedllm.models.adapters import attach_lora

        base = load_base_model(cfg.model)
        base.model = attach_lora(base.model, cfg.lora)
        return cls(base=base, slot=AdapterSlot(base.model), lora_key=cfg.lora.model_dump_json())

    def check(self, cfg: RunConfig) -> None:
        if cfg.lora.model_dump_json() != self.lora_key:
            raise RunError("a shared session must use one LoRA configuration for every run")


def load_federation(cfg: RunConfig) -> FederatedDataset:
    from fedllm.data.sources import load_dataset

    return load_dataset(cfg.data.dataset, test_fraction=cfg.data.test_fraction, seed=cfg.seed, **cfg.data.build)


def run_clients(cfg: RunConfig, dataset: FederatedDataset) -> list[str]:
    """The clients a run federates (the first ``data.max_clients``, in file order)."""
    ids = list(dataset.client_ids)[: cfg.data.max_clients or None]
    if not ids:
        raise RunError(f"dataset {cfg.data.dataset!r} has no clients")
    return ids


class Simulation:
    def __init__(self, cfg: RunConfig, *, session: Session | None = None, dataset: FederatedDataset | None = None,
                 reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.reporter = reporter or Reporter()
        self._session = session
        self._dataset = dataset

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.dataset = self._dataset if self._dataset is not None else load_federation(cfg)
        self.client_ids = ids = run_clients(cfg, self.dataset)
        self.session = self._session or Session.create(cfg)
        self.session.check(cfg)
        self.slot = self.session.slot
        base = self.session.base
        self.tokenizer = base.tokenizer
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.template = get_template(cfg.data.template, self.tokenizer)
        self.objective = get_objective(cfg.train.objective)
        self.algorithm: Algorithm = build_algorithm(cfg.fl.params(), num_clients=len(ids))
        if self.algorithm.single_client:
            self.participants = [self._resolve_local_client(cfg.fl.local_client)]
        else:
            self.participants = ids
        self.trainer = LocalTrainer(self.slot, self.objective, base.precision, self.pad_id,
                                    weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm)
        self.store = ClientStateStore(self.run_dir / "client_state") if self.algorithm.stateful_clients else None
        self.num_samples, self.heldout = self._scan_clients()
        self.adapter_bytes = S.num_bytes(self.slot.read())
        self.wire_bytes = serialized_bytes(self.slot.read())  # what one adapter transfer costs
        self.shape = ModelShape.of(self.slot.model)
        self.setup_seconds = time.perf_counter() - t0

    def _resolve_local_client(self, which: str | int) -> str:
        if isinstance(which, int):
            if not 0 <= which < len(self.client_ids):
                raise RunError(f"fl.local_client={which} is out of range: {len(self.client_ids)} clients")
            return self.client_ids[which]
        if which not in self.client_ids:
            raise RunError(f"fl.local_client={which!r} is not a client id (e.g. {self.client_ids[:3]})")
        return which

    def _encode(self, samples: list[Any]) -> list[dict[str, Any]]:
        c = self.cfg.data
        return [self.objective.encode(s, self.template, self.tokenizer, c.max_length) for s in samples]

    def _scan_clients(self) -> tuple[dict[str, int], dict[str, list[dict[str, Any]]]]:
        """One pass over the clients: training-set sizes (aggregation weights) and encoded test sets."""
        cap = self.cfg.eval.max_samples_per_client
        sizes, heldout = {}, {}
        for cid in self.client_ids:
            client = self.dataset[cid]
            sizes[cid] = client.num_train
            test = client.test[:cap] if cap else client.test
            if test:
                heldout[cid] = self._encode(test)
        return sizes, heldout

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        ckpt_root = self.run_dir / "checkpoints"
        if not resume and (ckpt_root.exists() or (self.run_dir / "metrics.jsonl").exists()):
            raise RunError(f"{self.run_dir} already holds a run; resume it with `fedllm train --resume {self.run_dir}` "
                           f"or choose another name (name=...)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._setup()
        start_round, global_state = 0, None
        metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        timing = {"train_seconds": 0.0, "eval_seconds": 0.0}
        history: list[dict[str, Any]] = []
        if resume and (ckpts := list_checkpoints(ckpt_root)):
            ck = load_checkpoint(ckpts[-1])
            start_round, global_state = ck.round, ck.global_state
            self.algorithm.load_state_dict(ck.server_state)
            if self.store is not None:
                self.store.restore(ck.path / "client_state")
            metrics.truncate(int(ck.info["metrics_offset"]))
            timing = ck.info.get("timing", timing)
            history = ck.info.get("history", [])
            self.reporter.info(f"resuming {self.run_dir} after round {start_round}")
        else:
            if self.store is not None:
                self.store.clear()
            metrics.truncate(0)
            write_text_atomic(self.run_dir / "config.yaml", dump_config(cfg))
            global_state = self.slot.initial_state(derive_seed(cfg.seed, "lora-init"))
            metrics.write("setup", clients=len(self.client_ids), participants=len(self.participants),
                          adapter_parameters=self.slot.num_parameters(), adapter_bytes=self.adapter_bytes,
                          wire_bytes=self.wire_bytes, body_parameters=self.shape.body_params, precision=self.session.base.precision.name, device=str(self.session.base.device),
                          setup_seconds=self.setup_seconds)
            if cfg.eval.at_start:
                history.append(self._evaluate(0, global_state, metrics, timing))
        rounds = cfg.fl.rounds
        with self.reporter.rounds(rounds, start_round, title=f"{cfg.name} ({cfg.fl.algorithm})") as progress:
            for r in range(start_round, rounds):
                global_state = self._round(r, global_state, metrics, timing, progress)
                done = r + 1
                if (cfg.eval.every and done % cfg.eval.every == 0) or done == rounds:
                    history.append(self._evaluate(done, global_state, metrics, timing))
                if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == rounds:
                    metrics.write("checkpoint", round=done)
                    info = {"metrics_offset": metrics.offset(), "timing": timing, "history": history}
                    save_checkpoint(ckpt_root, done, global_state, self.algorithm.state_dict(), self.store, info,
                                    keep=cfg.checkpoint.keep)
                progress.advance()
        save_adapter(self.slot, global_state, self.run_dir / "adapter")
        summary = self._summary(history, timing)
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        metrics.close()
        self.slot.load(global_state)
        self.final_state = global_state
        return summary

    def _round(self, r: int, global_state: S.State, metrics: MetricsLog, timing: dict[str, float], progress: Any) -> S.State:
        cfg, alg = self.cfg, self.algorithm
        t0 = time.perf_counter()
        lr = cosine_lr(r, cfg.fl.rounds, cfg.train.lr, cfg.train.lr_min)
        if alg.single_client:
            sampled = self.participants
        else:
            sampled = sample_uniform(self.participants, cfg.fl.clients_per_round, cfg.seed, r)
        updates: list[ClientUpdate] = []
        losses: dict[str, float] = {}
        for cid in sampled:
            update, losses[cid] = self._train_client(r, cid, global_state, lr, metrics, progress)
            updates.append(update)
        new_state = alg.aggregate(global_state, updates)
        seconds = time.perf_counter() - t0
        timing["train_seconds"] += seconds
        n_loss = sum(u.num_seen for u in updates)
        metrics.write("round", round=r + 1, lr=lr, clients=sampled, seconds=seconds,
                      loss=sum(losses[u.client_id] * u.num_seen for u in updates) / max(n_loss, 1),
                      update_norm=S.norm(S.sub(new_state, global_state)),
                      bytes_up=self.wire_bytes * len(updates), bytes_down=self.wire_bytes * len(updates))
        return new_state

    def _train_client(self, r: int, cid: str, global_state: S.State, lr: float, metrics: MetricsLog, progress: Any) -> tuple[ClientUpdate, float]:
        cfg, alg = self.cfg, self.algorithm
        client = self.dataset[cid]
        if not client.train:
            raise RunError(f"client {cid!r} has no training samples")
        feats = self._encode(client.train)
        t = cfg.train
        if t.local_steps == "dynamic":
            k = dynamic_local_steps(client.num_train, t.epochs, cfg.fl.rounds, cfg.fl.clients_per_round,
                                    len(self.participants), t.batch_size, t.grad_accum)
        else:
            k = int(t.local_steps)
        steps = draw_round_batches([self.objective.length(f) for f in feats], k, t.batch_size, t.grad_accum,
                                   derive_seed(cfg.seed, "batches", r, cid), t.group_by_length)
        self.slot.load(global_state)
        client_state = self.store.get(cid) if self.store is not None else None
        hooks = alg.client_hooks(global_state, client_state)
        torch.manual_seed(derive_seed(cfg.seed, "torch", r, cid))  # LoRA dropout
        task = progress.client(cid, k)

        def on_step(info: StepInfo) -> None:
            metrics.write("step", round=r + 1, client=cid, step=info.step + 1, loss=info.loss, lr=lr,
                          tokens=info.tokens, seconds=info.seconds)
            progress.step(task, info.loss)

        res = self.trainer.train(feats, steps, lr, hooks, on_step)
        progress.done(task)
        extras, new_client_state = hooks.finish(res.state, res.num_steps, lr)
        if new_client_state is not None and self.store is not None:
            self.store.put(cid, new_client_state)
        metrics.write("client", round=r + 1, client=cid, loss=res.loss, lr=lr, steps=res.num_steps,
                      samples=res.num_seen, tokens=res.num_tokens, seconds=res.seconds,
                      tokens_per_s=res.num_tokens / max(res.seconds, 1e-9), seconds_per_step=res.seconds / max(res.num_steps, 1),
                      bytes_up=self.wire_bytes, bytes_down=self.wire_bytes, labelled_tokens=res.num_units,
                      flops=train_flops(self.shape, res.num_tokens, res.num_units),
                      **peak_memory_mb(self.session.base.device))
        update = ClientUpdate(client_id=cid, delta=S.sub(res.state, global_state), num_samples=self.num_samples[cid],
                              num_seen=res.num_seen, num_steps=res.num_steps, lr=lr, extras=extras)
        return update, res.loss

    def _evaluate(self, round_done: int, global_state: S.State, metrics: MetricsLog, timing: dict[str, float]) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.slot.load(global_state)
        res: HeldoutResult = evaluate_heldout(self.slot.model, self.objective, self.heldout, self.pad_id,
                                              self.session.base.precision, self.cfg.eval.batch_size)
        seconds = time.perf_counter() - t0
        timing["eval_seconds"] += seconds
        row = {"round": round_done, **res.to_dict(), "seconds": seconds}
        if self.algorithm.single_client:
            own = res.per_client.get(self.participants[0])
            row["own_loss"] = own["loss"] if own else None
        metrics.write("eval", **row)
        self.reporter.eval(round_done, res.pooled_loss, res.mean_client_loss)
        return {k: v for k, v in row.items() if k != "per_client"}

    def _summary(self, history: list[dict[str, Any]], timing: dict[str, float]) -> dict[str, Any]:
        cfg = self.cfg
        final = history[-1] if history else {}
        return {
            "name": cfg.name, "algorithm": cfg.fl.algorithm, "compat": cfg.fl.compat, "rounds": cfg.fl.rounds,
            "clients": len(self.client_ids), "participants": self.participants if self.algorithm.single_client else None,
            "final_eval": final, "eval_history": history, **timing,
            "precision": self.session.base.precision.name,
            "adapter_parameters": self.slot.num_parameters(), "adapter_bytes": self.adapter_bytes,
            "cost": cost_summary(read_metrics(self.run_dir / "metrics.jsonl", "client"), self.wire_bytes),
            **peak_memory_mb(self.session.base.device),
        }


def resume_config(run_dir: Path) -> RunConfig:
    """The resolved config of an existing run, pointed at where the run directory is now."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config(path, [f"output_dir={run_dir.parent}", f"name={run_dir.name}"])
