"""Held-out loss and perplexity on each client's test split and pooled over all clients; also the
training engine's evaluation callback (``HeldoutEvaluator``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedllm.data.schema import Sample
from fedllm.models.precision import Precision
from fedllm.train.objectives import Objective, to_device
from fedllm.train.task import Task


@dataclass
class HeldoutResult:
    per_client: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> {loss, tokens}
    pooled_loss: float = float("nan")  # token-weighted over all clients
    mean_client_loss: float = float("nan")  # unweighted mean of per-client losses

    @property
    def pooled_ppl(self) -> float:
        return math.exp(self.pooled_loss) if math.isfinite(self.pooled_loss) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"pooled_loss": self.pooled_loss, "pooled_ppl": self.pooled_ppl,
                "mean_client_loss": self.mean_client_loss, "per_client": self.per_client}


@torch.no_grad()
def evaluate_heldout(model: Any, objective: Objective, features: dict[str, list[dict[str, Any]]], pad_id: int,
                     precision: Precision, batch_size: int = 8) -> HeldoutResult:
    """Token-level loss of ``model`` on every client's encoded test features."""
    was_training = model.training
    model.eval()
    out = HeldoutResult()
    total_loss, total_units = 0.0, 0
    try:
        for cid, feats in features.items():
            order = sorted(range(len(feats)), key=lambda i: objective.length(feats[i]))
            c_loss, c_units = 0.0, 0
            for j in range(0, len(order), batch_size):
                batch = to_device(objective.collate([feats[i] for i in order[j:j + batch_size]], pad_id), precision.device)
                with precision.autocast():
                    loss_sum, units = objective.loss_sum(model, batch)
                c_loss += float(loss_sum)
                c_units += units
            if c_units:
                out.per_client[cid] = {"loss": c_loss / c_units, "tokens": c_units}
                total_loss += c_loss
                total_units += c_units
    finally:
        model.train(was_training)
    if total_units:
        out.pooled_loss = total_loss / total_units
        out.mean_client_loss = sum(v["loss"] for v in out.per_client.values()) / len(out.per_client)
    return out


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
