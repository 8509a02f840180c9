"""Held-out loss and perplexity on each client's test split and pooled over all clients; also the
training engine's evaluation callback (``HeldoutEvaluator``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedllm.data.schema import Sample
from fedllm.models.precision import Precision
from fedllm.models.stored_weights import inference_weights
from fedllm.train.objectives import Objective, to_device
from fedllm.train.task import Task


@dataclass
class HeldoutResult:
    per_client: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> {loss, tokens, stats…}
    pooled_loss: float = float("nan")  # weighted by loss units (tokens for SFT, pairs for DPO) over all clients
    mean_client_loss: float = float("nan")  # unweighted mean of per-client losses
    stats: dict[str, float] = field(default_factory=dict)  # the objective's statistics, pooled (DPO: reward accuracy …)
    perplexity: bool = True  # whether exp(loss) is a perplexity

    @property
    def pooled_ppl(self) -> float | None:
        if not self.perplexity:
            return None
        return math.exp(self.pooled_loss) if math.isfinite(self.pooled_loss) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"pooled_loss": self.pooled_loss, "pooled_ppl": self.pooled_ppl,
                "mean_client_loss": self.mean_client_loss, **self.stats, "per_client": self.per_client}


@dataclass
class ClientSums:
    """One client's held-out sums: loss and statistics summed over its loss units (tokens for SFT,
    pairs for DPO). Sums pool exactly, wherever they were computed."""

    loss: float
    units: int
    stats: dict[str, float] = field(default_factory=dict)


def _samples(model: Any, objective: Objective, features: dict[str, list[dict[str, Any]]], pad_id: int,
             precision: Precision, batch_size: int) -> Iterator[tuple[str, int, float, int, dict[str, float]]]:
    """(client id, feature index, summed loss, units, summed statistics) of every held-out sample, batched
    by length within each client (batches that mixed clients would move bf16 numbers with the mix)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), inference_weights(model, precision):  # bf16 casts once, not in every batch
            for cid, feats in features.items():
                objective.begin_eval(model, feats, pad_id, precision, batch_size)
                order = sorted(range(len(feats)), key=lambda i: objective.length(feats[i]))
                for j in range(0, len(order), batch_size):
                    chunk = order[j:j + batch_size]
                    batch = to_device(objective.collate([feats[i] for i in chunk], pad_id), precision.device)
                    with precision.autocast():
                        losses, units, stats = objective.sample_sums(model, batch)
                    losses, units = losses.float().tolist(), units.tolist()
                    stats = {k: v.float().tolist() for k, v in stats.items()}
                    for b, i in enumerate(chunk):
                        yield cid, i, losses[b], int(units[b]), {k: v[b] for k, v in stats.items()}
    finally:
        model.train(was_training)


def heldout_sums(model: Any, objective: Objective, features: dict[str, list[dict[str, Any]]], pad_id: int,
                 precision: Precision, batch_size: int = 8) -> dict[str, ClientSums]:
    """The objective's summed loss (and statistics) of ``model`` on each client's encoded test features;
    clients with no loss unit are left out."""
    sums = {cid: ClientSums(0.0, 0) for cid in features}
    for cid, _, loss, units, stats in _samples(model, objective, features, pad_id, precision, batch_size):
        c = sums[cid]
        c.loss += loss
        c.units += units
        for k, v in stats.items():
            c.stats[k] = c.stats.get(k, 0.0) + v
    return {cid: c for cid, c in sums.items() if c.units}


def sample_losses(model: Any, objective: Objective, features: dict[str, list[dict[str, Any]]], pad_id: int,
                  precision: Precision, batch_size: int = 8) -> dict[str, list[float]]:
    """Each held-out sample's own mean loss, per client in feature order (NaN without a loss unit): the
    unit of a paired comparison of two models on the same samples (``fedllm.bench.paired``)."""
    out = {cid: [float("nan")] * len(feats) for cid, feats in features.items()}
    for cid, i, loss, units, _ in _samples(model, objective, features, pad_id, precision, batch_size):
        if units:
            out[cid][i] = loss / units
    return out


def pool(sums: dict[str, ClientSums], perplexity: bool = True) -> HeldoutResult:
    """Per-client means and the pooled numbers (weighted by loss units), in the order of ``sums``."""
    out = HeldoutResult(perplexity=perplexity)
    total_loss, total_units = 0.0, 0
    totals: dict[str, float] = {}
    for cid, c in sums.items():
        out.per_client[cid] = {"loss": c.loss / c.units, "tokens": c.units, **{k: v / c.units for k, v in c.stats.items()}}
        total_loss += c.loss
        total_units += c.units
        for k, v in c.stats.items():
            totals[k] = totals.get(k, 0.0) + v
    if total_units:
        out.pooled_loss = total_loss / total_units
        out.mean_client_loss = sum(v["loss"] for v in out.per_client.values()) / len(out.per_client)
        out.stats = {k: v / total_units for k, v in totals.items()}
    return out


def evaluate_heldout(model: Any, objective: Objective, features: dict[str, list[dict[str, Any]]], pad_id: int,
                     precision: Precision, batch_size: int = 8) -> HeldoutResult:
    """The objective's loss (and statistics) of ``model`` on every client's encoded test features."""
    return pool(heldout_sums(model, objective, features, pad_id, precision, batch_size), objective.perplexity)


def encode_tests(task: Task, tests: Mapping[str, Sequence[Sample]], cap: int | None) -> dict[str, list[dict[str, Any]]]:
    """Each client's first ``cap`` test samples, encoded; samples truncated to no loss unit are left out."""
    out = {}
    for cid, samples in tests.items():
        enc = task.encode(samples[:cap] if cap else samples)
        if enc.features:
            out[cid] = enc.features
    return out


class HeldoutEvaluator:
    """The engine's evaluation callback: held-out loss of the global adapter on every client's test split."""

    def __init__(self, batch_size: int = 8, max_samples_per_client: int | None = None) -> None:
        self.batch_size = batch_size
        self.cap = max_samples_per_client

    @classmethod
    def from_config(cls, eval_cfg: Any) -> HeldoutEvaluator:
        """From a run config's ``eval`` section."""
        return cls(eval_cfg.batch_size, eval_cfg.max_samples_per_client)

    def prepare(self, task: Task, precision: Precision, tests: dict[str, list[Sample]]) -> None:
        self.task, self.precision = task, precision
        self.features = encode_tests(task, tests, self.cap)

    def __call__(self, model: Any) -> dict[str, Any]:
        res = evaluate_heldout(model, self.task.objective, self.features, self.task.pad_id, self.precision, self.batch_size)
        return res.to_dict()

    def client(self, model: Any, client_id: str) -> dict[str, float] | None:
        """The held-out numbers of one client's split (a personalised adapter on its own client);
        None if the client has no held-out sample."""
        if client_id not in self.features:
            return None
        res = evaluate_heldout(model, self.task.objective, {client_id: self.features[client_id]}, self.task.pad_id,
                               self.precision, self.batch_size)
        return res.per_client.get(client_id)
