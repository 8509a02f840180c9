"""Held-out loss and perplexity on each client's test split and pooled over all clients."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from fedllm.models.precision import Precision
from fedllm.train.objectives import Objective, to_device


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
