"""One client's round, from its instruction alone plus what the client itself holds: its data, the
shared base model (through the adapter slot) and its own persistent state. No server object is
reachable from here, so an in-process simulation and a network transport call the very same function.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from fedllm.data.schema import ClientData, Sample
from fedllm.engine.messages import Instruction, Reply
from fedllm.fl.codec import WireSpec, lossless
from fedllm.engine.hetero_lora import client_model
from fedllm.engine.store import ClientStateStore
from fedllm.fl import TRANSFORMS, ClientContext, ClientUpdate, build_client_hooks
from fedllm.fl import state as S
from fedllm.models.adapters import AdapterSlot
from fedllm.models.precision import Precision
from fedllm.seeding import derive_seed
from fedllm.train.batching import draw_round_batches, dynamic_local_steps
from fedllm.train.cost import ModelShape, peak_memory_mb
from fedllm.train.local import LocalTrainer, StepInfo
from fedllm.train.encoding_cache import EncodingCache
from fedllm.train.task import Encoded, Task

StepCallback = Callable[[str, StepInfo], None]


class ClientError(RuntimeError):
    """A client cannot run the round it was sent (e.g. it has no trainable sample)."""


@dataclass
class ClientRuntime:
    """What a client process holds across rounds: the adapter slot on the shared base model, the task
    that encodes its data (through an encoding cache, if it has one), the precision it computes in,
    its own persistent-state store and the view of the model it trains (offsite-tuning's emulator)."""

    slot: AdapterSlot
    task: Task
    precision: Precision
    store: ClientStateStore | None = None
    encodings: EncodingCache | None = None
    view: Callable[[], AbstractContextManager[Any]] = nullcontext  # entered around every local training

    def encode(self, samples: list[Sample]) -> Encoded:
        return (self.encodings or self.task).encode(samples)

    def __post_init__(self) -> None:
        with self.view():  # the FLOPs of the model clients train (the emulator's, under offsite-tuning)
            self.shape = ModelShape.of(self.slot.model)


def local_training(train: dict[str, Any]) -> dict[str, Any]:
    """Check the instruction's local-training settings (they come from another process)."""
    need = ("local_steps", "batch_size", "grad_accum", "group_by_length", "optimizer", "momentum",
            "weight_decay", "max_grad_norm")
    missing = [k for k in need if k not in train]
    if missing:
        raise ClientError(f"instruction lacks local-training settings {missing}")
    return train


def num_local_steps(train: dict[str, Any], num_samples: int) -> int:
    """K for this client: fixed, or FedLLM-Bench's dynamic rule from its own sample count."""
    if train["local_steps"] != "dynamic":
        return int(train["local_steps"])
    d = train["dynamic"]
    return dynamic_local_steps(num_samples, d["epochs"], d["rounds"], d["clients_per_round"], d["num_clients"],
                               train["batch_size"], train["grad_accum"])


def _batches(rt: ClientRuntime, enc: Encoded, steps: int, tr: dict[str, Any], seed: int) -> list[list[list[int]]]:
    """``steps`` optimizer steps of micro-batches over the client's encoded samples, drawn with ``seed``."""
    return draw_round_batches([rt.task.objective.length(f) for f in enc.features], steps, tr["batch_size"],
                              tr["grad_accum"], seed, tr["group_by_length"])


def local_trainer(rt: ClientRuntime, tr: dict[str, Any]) -> LocalTrainer:
    """A trainer of the client's adapter slot with the instruction's local-training settings."""
    return LocalTrainer(rt.slot, rt.task.objective, rt.precision, rt.task.pad_id, weight_decay=tr["weight_decay"],
                        max_grad_norm=tr["max_grad_norm"], optimizer=tr["optimizer"], momentum=tr["momentum"])


def run_client_round(ins: Instruction, data: ClientData, rt: ClientRuntime,
                     on_step: StepCallback | None = None) -> Reply:
    """Train the client's adapter for one round and return its update (Δ_i after the client-stage
    transforms), its counts, the method's payload and its metrics."""
    cid = ins.client_id
    tr = local_training(ins.train)
    enc = rt.encode(data.train)
    if not enc.features:
        why = ", ".join(f"{n}: {reason}" for reason, n in sorted(enc.reasons.items()))
        raise ClientError(f"client {cid!r} has no trainable sample at max_length {rt.task.max_length} ({why})")
    k = num_local_steps(tr, len(enc))
    steps = _batches(rt, enc, k, tr, derive_seed(ins.seed, "batches", ins.round, cid))
    client_state = rt.store.get(cid) if rt.store is not None else None
    hooks = build_client_hooks(ins.method, ins.adapter, ins.payload, client_state)
    start = hooks.start(ins.adapter)
    if start.keys() != rt.slot.params.keys():
        raise ClientError(f"the instruction's adapter does not fit client {cid!r}'s model")
    rt.slot.load(start)
    torch.manual_seed(derive_seed(ins.seed, "torch", ins.round, cid))  # LoRA dropout
    trainer = local_trainer(rt, tr)
    step_log: list[dict[str, float]] = []

    def record(info: StepInfo) -> None:
        step_log.append({"loss": info.loss, "tokens": info.tokens, "seconds": info.seconds, **info.stats})
        if on_step is not None:
            on_step(cid, info)

    with rt.view(), client_model(rt.slot.model, ins.method, ins.payload):  # FLoRA: merged base, own scaling
        res = trainer.train(enc.features, steps, ins.lr, hooks, record)
    personal: dict[str, Any] = {}
    tokens, labelled = res.num_tokens, res.num_labelled  # both phases count towards the FLOPs
    if (phase := hooks.personal_phase()) is not None:  # e.g. Ditto's personal adapter
        rt.slot.load(phase.start)
        with rt.view():
            mine = trainer.train(enc.features, _batches(rt, enc, phase.steps or k, tr,
                                                        derive_seed(ins.seed, "personal-batches", ins.round, cid)),
                                 ins.lr, phase.hooks)
        hooks.personal_done(mine.state)
        personal = {"personal_loss": mine.loss, "personal_steps": mine.num_steps, "personal_seconds": mine.seconds,
                    "personal_tokens": mine.num_tokens}
        tokens, labelled = tokens + mine.num_tokens, labelled + mine.num_labelled
    extras, new_state = hooks.finish(res.state, res.num_steps, ins.lr)
    if new_state is not None:
        if rt.store is None:
            raise ClientError(f"client method {ins.method.get('name')!r} keeps client state, but client {cid!r} has no store")
        rt.store.put(cid, new_state)
    result = hooks.result(res.state)
    delta = S.sub(result, {key: ins.adapter[key] for key in result})
    ctx = ClientContext(seed=ins.seed, round=ins.round, client_id=cid)
    for spec in ins.transforms:
        delta = TRANSFORMS.lookup(spec["name"]).on_client({k: v for k, v in spec.items() if k != "name"}, delta, ctx)
    delta = hooks.outgoing(delta)  # e.g. a rank-r_i client's r_i components only
    metrics = {
        "loss": res.loss, **res.stats, "steps": res.num_steps, "samples": res.num_seen, "tokens": res.num_tokens,
        "seconds": res.seconds, "tokens_per_s": res.num_tokens / max(res.seconds, 1e-9),
        "seconds_per_step": res.seconds / max(res.num_steps, 1), "labelled_tokens": res.num_labelled,
        "flops": rt.task.objective.flops(rt.shape, tokens, labelled), "dropped_samples": enc.dropped,
        **personal, **peak_memory_mb(rt.precision.device), "step_log": step_log,
    }
    update = ClientUpdate(client_id=cid, delta=delta, num_samples=len(enc), num_seen=res.num_seen,
                          num_steps=res.num_steps, lr=ins.lr, extras=extras)
    return Reply(round=ins.round, update=update, metrics=metrics)


def finetune_client(adapter: S.State, data: ClientData, rt: ClientRuntime, train: dict[str, Any], steps: int,
                    lr: float, seed: int) -> S.State | None:
    """FedAvg+FT: ``steps`` local steps from ``adapter`` on the client's own training data (batches
    and dropout seeded by (seed, client)); None if it has no trainable sample."""
    enc = rt.encode(data.train)
    if not enc.features:
        return None
    batches = _batches(rt, enc, steps, train, derive_seed(seed, "finetune", data.id))
    rt.slot.load(adapter)
    torch.manual_seed(derive_seed(seed, "finetune-torch", data.id))
    with rt.view():
        return local_trainer(rt, train).train(enc.features, batches, lr).state


SEP = "\x1f"


def serve_round(blob: bytes, data: ClientData, rt: ClientRuntime, on_step: StepCallback | None = None) -> bytes:
    """A client's whole side of a round, bytes in and bytes out: decode the instruction, run the
    round, encode the reply as the instruction asks (with the client's error-feedback residuals,
    kept in its store). An update the lossy codec cannot encode (non-finite) travels exactly, so the
    server can see it and drop it with its reason."""
    ins = Instruction.from_bytes(blob)
    reply = run_client_round(ins, data, rt, on_step)
    wire = WireSpec.model_validate(ins.reply_wire)
    feedback = wire.error_feedback and not lossless(wire)
    if feedback and rt.store is None:
        raise ClientError(f"the reply codec keeps error-feedback residuals, but client {ins.client_id!r} has no store")
    residuals = _unflatten(rt.store.get(ins.client_id, "codec")) if feedback else None
    try:
        out = reply.to_bytes(wire, residuals)
    except ValueError:
        reply.metrics["codec_fallback"] = "non-finite update sent exactly"
        return reply.to_bytes(WireSpec(zstd=wire.zstd))
    if feedback:
        rt.store.put(ins.client_id, _flatten(residuals), "codec")
    return out


def _flatten(groups: dict[str, dict]) -> dict:
    return {f"{g}{SEP}{k}": v for g, st in groups.items() for k, v in st.items()}


def _unflatten(flat: dict | None) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, v in (flat or {}).items():
        g, k = name.split(SEP, 1)
        out.setdefault(g, {})[k] = v
    return out

