"""MT-Bench (Zheng et al. 2023): two-turn questions in 8 categories, answered with FastChat's
per-category temperatures, each turn graded 1-10 by the LLM judge with FastChat's single-answer
prompts (reference-guided for math, reasoning and coding). Reports MT-1, MT-2 and their mean.

An unparsable or failed judgment is recorded and excluded from the means, never counted as a score.
"""

from __future__ import annotations

from typing import ClassVar

from fedllm.eval.benchdata import BenchQuestion, load_bench_questions, load_judge_prompts
from fedllm.eval.context import EvalContext, MetricResult, mean
from fedllm.eval.judge import judgment_counts, summarize
from fedllm.eval.metrics import register_metric
from fedllm.eval.prompts import MT_BENCH_TEMPERATURE, mt_judge_prompt


@register_metric
class MTBench:
    name: ClassVar[str] = "mt_bench"
    columns: ClassVar[tuple[str, ...]] = ("mt1", "mt2", "mt_bench")
    needs_judge: ClassVar[bool] = True
    description: ClassVar[str] = "MT-Bench MT-1, MT-2 and their mean (1-10), LLM judge with FastChat's prompts"

    def run(self, ctx: EvalContext) -> MetricResult:
        questions: list[BenchQuestion] = ctx.subset(load_bench_questions("mt_bench", ctx.data_dir), group=lambda q: q.category)
        prompts = load_judge_prompts(ctx.data_dir)
        max_new = ctx.option("max_new_tokens", 512)
        dec = {q.question_id: ctx.decoding(MT_BENCH_TEMPERATURE.get(q.category, 0.7), max_new) for q in questions}
        first = ctx.generate([(f"mt_bench/{q.question_id}/1", ctx.prompt([{"role": "user", "content": q.turns[0]}]),
                               dec[q.question_id]) for q in questions], desc="mt-bench turn 1")
        second = ctx.generate([(f"mt_bench/{q.question_id}/2", ctx.prompt([
            {"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": a1},
            {"role": "user", "content": q.turns[1]}]), dec[q.question_id]) for q, a1 in zip(questions, first)],
            desc="mt-bench turn 2")
        reqs = [mt_judge_prompt(prompts, q, [a1, a2], t) for t in (1, 2) for q, a1, a2 in zip(questions, first, second)]
        js = ctx.rate(reqs, desc="mt-bench judge")
        j1, j2 = js[: len(questions)], js[len(questions):]
        items = [{"question_id": q.question_id, "category": q.category, "turns": list(q.turns), "answers": [a1, a2],
                  "scores": [x.score, y.score], "errors": [x.error, y.error], "judgments": [x.raw, y.raw]}
                 for q, a1, a2, x, y in zip(questions, first, second, j1, j2)]
        mt1, mt2 = summarize(j1)["mean"], summarize(j2)["mean"]
        per_cat: dict[str, list[float | None]] = {}
        for it in items:
            per_cat.setdefault(it["category"], []).extend(it["scores"])
        summary = {"questions": len(questions), "turn1": judgment_counts(j1), "turn2": judgment_counts(j2),
                   "excluded": len(js) - summarize(js)["n"],
                   "per_category": {c: mean(v) for c, v in sorted(per_cat.items())}}
        both = mean([mt1, mt2]) if mt1 is not None and mt2 is not None else None
        return MetricResult({"mt1": mt1, "mt2": mt2, "mt_bench": both}, summary, items)
