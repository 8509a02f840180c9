"""Ref-judge ("Ref-GPT4" in FedLLM-Bench): in-domain questions graded 1-10 by the LLM judge against
the human reference answer when there is one.

As FedLLM-Bench judges its own test sets: Fed-Aya's (language -> items) with the Aya rules (answer in
the question's language, answer the request, be factual, be fluent) and the mean of the per-language
means as the headline; Fed-ChatbotIT's and Fed-WildChat's (a list, some items with a language) with
the general prompt and the plain mean over items. The per-language mean ± std is always reported
beside it. Options: ``aya_rules`` (true/false) and ``average`` (``items`` or ``languages``).

``preset``: ``fedllm`` (the default) uses this project's prompt wording (the reference shown before
the answer), the judge's own temperature (JudgeConfig, 0.0 by default) and answers of at
most 256 new tokens; ``fedllm-bench`` uses FedLLM-Bench's prompts word for word, judge temperature 0.2
with 2,048 tokens, and answers of at most 1,024 new tokens, so scores can be set beside the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from fedllm.describe import mean_std
from fedllm.eval.context import EvalContext, EvalError, MetricResult, mean
from fedllm.eval.indomain import indomain_answers, indomain_items
from fedllm.eval.judge import judgment_counts
from fedllm.eval.metrics import register_metric
from fedllm.eval.prompts import fedllm_bench_judge_prompt, ref_judge_prompt
from fedllm.eval.benchdata import RefItem, is_language_keyed

PRESETS = {
    "fedllm": {"prompt": ref_judge_prompt, "temperature": None, "max_tokens": None, "max_new_tokens": 256},
    "fedllm-bench": {"prompt": fedllm_bench_judge_prompt, "temperature": 0.2, "max_tokens": 2048,
                     "max_new_tokens": 1024},
}


@register_metric
class RefJudge:
    name: ClassVar[str] = "ref_judge"
    columns: ClassVar[tuple[str, ...]] = ("ref_judge",)
    needs_judge: ClassVar[bool] = True
    description: ClassVar[str] = "in-domain judge score (1-10) against references; per-language for Fed-Aya"

    def run(self, ctx: EvalContext) -> MetricResult:
        items, source = indomain_items(ctx)
        testset = ctx.option("testset", "")
        keyed = is_language_keyed(Path(testset)) if testset else any(it.language for it in items)
        aya = ctx.option("aya_rules", keyed)
        average = ctx.option("average", "languages" if keyed else "items")
        if average not in ("items", "languages"):
            raise EvalError(f"ref_judge.average={average!r}: expected items or languages")
        name = ctx.option("preset", "fedllm")
        if name not in PRESETS:
            raise EvalError(f"ref_judge.preset={name!r}: expected one of {', '.join(PRESETS)}")
        preset = PRESETS[name]
        answers = indomain_answers(ctx, items, preset["max_new_tokens"])
        reqs = [preset["prompt"](RefItem(it.item_id, it.language, it.question, it.reference), a, aya_rules=aya)
                for it, a in zip(items, answers)]
        js = ctx.rate(reqs, desc="ref judge", temperature=preset["temperature"], max_tokens=preset["max_tokens"])
        rows = [{"id": it.item_id, "language": it.language, "question": it.question, "reference": it.reference,
                 "answer": a, "score": j.score, "error": j.error, "judgment": j.raw} for it, a, j in zip(items, answers, js)]
        by_lang: dict[str, list[float | None]] = {}
        for r in rows:
            by_lang.setdefault(r["language"] or "all", []).append(r["score"])
        per_lang = {lang: _scored_stats(v) for lang, v in sorted(by_lang.items())}
        lang_means = [v["mean"] for v in per_lang.values()]
        item_mean = mean(r["score"] for r in rows)
        language_mean = mean(lang_means) if len(per_lang) > 1 else item_mean
        score = language_mean if average == "languages" else item_mean
        summary = {"source": source, "items": len(rows), "preset": name, "aya_rules": aya, "average": average,
                   **judgment_counts(js),
                   "excluded": sum(j.score is None for j in js), "per_language": per_lang,
                   "mean_over_items": item_mean,
                   "mean_of_language_means": mean(lang_means) if len(per_lang) > 1 else None}
        return MetricResult({"ref_judge": score}, summary, rows)


def _scored_stats(scores: list[float | None]) -> dict[str, float | int | None]:
    """{mean, std, n} of the scored judgments; None (not NaN) where a language has none."""
    stats = mean_std(scores)
    return stats if stats["n"] else {"mean": None, "std": None, "n": 0}
