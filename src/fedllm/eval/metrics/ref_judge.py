"""Ref-judge ("Ref-GPT4" in FedLLM-Bench): in-domain questions graded 1-10 by the LLM judge against
the human reference answer when there is one. With languages (Fed-Aya), the judge also applies the
Aya rules (answer in the question's language, answer the request, be factual, be fluent) and the
report gives per-language mean ± std and the mean of the per-language means."""

from __future__ import annotations

from typing import ClassVar

from fedllm.describe import mean_std
from fedllm.eval.context import EvalContext, MetricResult, mean
from fedllm.eval.indomain import indomain_answers, indomain_items
from fedllm.eval.judge import judgment_counts
from fedllm.eval.metrics import register_metric
from fedllm.eval.prompts import ref_judge_prompt
from fedllm.eval.benchdata import RefItem


@register_metric
class RefJudge:
    name: ClassVar[str] = "ref_judge"
    columns: ClassVar[tuple[str, ...]] = ("ref_judge",)
    needs_judge: ClassVar[bool] = True
    description: ClassVar[str] = "in-domain judge score (1-10) against references; per-language for Fed-Aya"

    def run(self, ctx: EvalContext) -> MetricResult:
        items, source = indomain_items(ctx)
        answers = indomain_answers(ctx, items)
        aya = ctx.option("aya_rules", any(it.language for it in items))
        reqs = [ref_judge_prompt(RefItem(it.item_id, it.language, it.question, it.reference), a, aya_rules=aya)
                for it, a in zip(items, answers)]
        js = ctx.rate(reqs, desc="ref judge")
        rows = [{"id": it.item_id, "language": it.language, "question": it.question, "reference": it.reference,
                 "answer": a, "score": j.score, "error": j.error, "judgment": j.raw} for it, a, j in zip(items, answers, js)]
        by_lang: dict[str, list[float | None]] = {}
        for r in rows:
            by_lang.setdefault(r["language"] or "all", []).append(r["score"])
        per_lang = {lang: _scored_stats(v) for lang, v in sorted(by_lang.items())}
        lang_means = [v["mean"] for v in per_lang.values()]
        score = mean(lang_means) if len(per_lang) > 1 else mean(r["score"] for r in rows)
        summary = {"source": source, "items": len(rows), "aya_rules": aya, **judgment_counts(js),
                   "excluded": sum(j.score is None for j in js), "per_language": per_lang,
                   "mean_of_language_means": mean(lang_means) if len(per_lang) > 1 else None}
        return MetricResult({"ref_judge": score}, summary, rows)


def _scored_stats(scores: list[float | None]) -> dict[str, float | int | None]:
    """{mean, std, n} of the scored judgments; None (not NaN) where a language has none."""
    stats = mean_std(scores)
    return stats if stats["n"] else {"mean": None, "std": None, "n": 0}
