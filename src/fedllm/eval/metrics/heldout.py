"""Held-out loss: token-level SFT loss on every client's test split of the target's federation,
pooled over all test tokens and per client (the same computation as the training run's evaluations)."""

from __future__ import annotations

from typing import ClassVar

from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.heldout import HeldoutEvaluator
from fedllm.eval.metrics import register_metric


@register_metric
class Heldout:
    name: ClassVar[str] = "heldout"
    columns: ClassVar[tuple[str, ...]] = ("heldout_loss",)
    needs_judge: ClassVar[bool] = False
    description: ClassVar[str] = "held-out loss on every client's test data (pooled over tokens)"

    def run(self, ctx: EvalContext) -> MetricResult:
        from fedllm.runs import load_federation, run_clients
        from fedllm.train.objectives import get_objective
        from fedllm.train.task import Task

        cfg = ctx.target.cfg
        fed = load_federation(cfg)
        cap = ctx.option("max_samples_per_client", cfg.eval.max_samples_per_client or 0) or None
        task = Task(get_objective(cfg.train.objective), ctx.template, ctx.model.tokenizer, cfg.data.max_length)
        evaluator = HeldoutEvaluator(cfg.eval.batch_size, cap)
        evaluator.prepare(task, ctx.model.precision, {cid: fed[cid].test for cid in run_clients(cfg, fed)})
        res = evaluator(ctx.model.model)
        items = [{"client": cid, **v} for cid, v in res["per_client"].items()]
        summary = {"dataset": cfg.data.dataset, "clients": len(evaluator.features), "max_samples_per_client": cap,
                   "pooled_loss": res["pooled_loss"], "pooled_ppl": res["pooled_ppl"],
                   "mean_client_loss": res["mean_client_loss"]}
        return MetricResult({"heldout_loss": res["pooled_loss"]}, summary, items)
