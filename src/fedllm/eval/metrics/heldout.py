"""Held-out loss: token-level SFT loss on every client's test split of the target's federation,
pooled over all test tokens and per client (the same computation as the training run's evaluations)."""

from __future__ import annotations

from typing import ClassVar

from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.heldout import evaluate_heldout
from fedllm.eval.metrics import register_metric


@register_metric
class Heldout:
    name: ClassVar[str] = "heldout"
    columns: ClassVar[tuple[str, ...]] = ("heldout_loss",)
    needs_judge: ClassVar[bool] = False
    description: ClassVar[str] = "held-out loss on every client's test data (pooled over tokens)"

    def run(self, ctx: EvalContext) -> MetricResult:
        from fedllm.engine.simulation import load_federation, run_clients
        from fedllm.train.objectives import get_objective

        cfg = ctx.target.cfg
        fed = load_federation(cfg)
        cap = ctx.option("max_samples_per_client", cfg.eval.max_samples_per_client or 0) or None
        objective = get_objective(cfg.train.objective)
        tok = ctx.model.tokenizer
        features = {}
        for cid in run_clients(cfg, fed):
            test = fed[cid].test[:cap] if cap else fed[cid].test
            if test:
                features[cid] = [objective.encode(s, ctx.template, tok, cfg.data.max_length) for s in test]
        res = evaluate_heldout(ctx.model.model, objective, features, ctx.model.pad_id, ctx.model.precision,
                               cfg.eval.batch_size)
        items = [{"client": cid, **v} for cid, v in res.per_client.items()]
        summary = {"dataset": cfg.data.dataset, "clients": len(features), "max_samples_per_client": cap,
                   "pooled_loss": res.pooled_loss, "pooled_ppl": res.pooled_ppl, "mean_client_loss": res.mean_client_loss}
        return MetricResult({"heldout_loss": res.pooled_loss}, summary, items)
