"""Vicuna bench: 80 single-turn questions answered with sampling at temperature 0.7 and graded 1-10
by the LLM judge (FastChat single-answer grading; reference-guided where a reference exists)."""

from __future__ import annotations

from typing import ClassVar

from fedllm.eval.benchdata import load_bench_questions, load_judge_prompts
from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.judge import judgment_counts, summarize
from fedllm.eval.metrics import register_metric
from fedllm.eval.prompts import vicuna_judge_prompt


@register_metric
class Vicuna:
    name: ClassVar[str] = "vicuna"
    columns: ClassVar[tuple[str, ...]] = ("vicuna",)
    needs_judge: ClassVar[bool] = True
    description: ClassVar[str] = "Vicuna bench mean judge score (1-10)"

    def run(self, ctx: EvalContext) -> MetricResult:
        questions = ctx.subset(load_bench_questions("vicuna_bench", ctx.data_dir), group=lambda q: q.category)
        prompts = load_judge_prompts(ctx.data_dir)
        d = ctx.decoding(temperature=0.7, max_new_tokens=512)
        answers = ctx.generate([(f"vicuna/{q.question_id}", ctx.prompt([{"role": "user", "content": q.turns[0]}]), d)
                                for q in questions], desc="vicuna")
        js = ctx.rate([vicuna_judge_prompt(prompts, q, a) for q, a in zip(questions, answers)], desc="vicuna judge")
        items = [{"question_id": q.question_id, "category": q.category, "question": q.turns[0], "answer": a,
                  "score": j.score, "error": j.error, "judgment": j.raw} for q, a, j in zip(questions, answers, js)]
        s = summarize(js)
        summary = {"questions": len(questions), **judgment_counts(js), "excluded": len(js) - s["n"], "decoding": d.__dict__}
        return MetricResult({"vicuna": s["mean"]}, summary, items)
