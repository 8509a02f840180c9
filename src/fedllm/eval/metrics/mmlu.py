"""MMLU (Hendrycks et al.): 5-shot, the answer is the letter A-D with the highest log-likelihood
after "Answer:" — no text is generated or parsed, so no answer-format failures. Accuracy overall
(micro over questions), per subject and per category (STEM, humanities, social sciences, other)."""

from __future__ import annotations

from typing import ClassVar

from fedllm.eval.benchdata import load_mmlu
from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.metrics import register_metric
from fedllm.eval.prompts import MMLU_LETTERS, MMLU_SUBJECT_CATEGORY, mmlu_prompt


@register_metric
class MMLU:
    name: ClassVar[str] = "mmlu"
    columns: ClassVar[tuple[str, ...]] = ("mmlu",)
    needs_judge: ClassVar[bool] = False
    description: ClassVar[str] = "MMLU accuracy (%), 5-shot, log-likelihood of A-D"

    def run(self, ctx: EvalContext) -> MetricResult:
        shots_n = ctx.option("shots", 5)
        dev = load_mmlu(ctx.data_dir, "dev")
        test = load_mmlu(ctx.data_dir, "test")
        per_subject = ctx.option("per_subject", 0)
        pool = [(s, i, q) for s in sorted(test) for i, q in enumerate(test[s][:per_subject] if per_subject else test[s])]
        chosen = ctx.subset(pool, group=lambda x: x[0])
        items_in = [(f"mmlu/{s}/{i}", mmlu_prompt(s, dev.get(s, [])[:shots_n], q), MMLU_LETTERS) for s, i, q in chosen]
        scores = ctx.continuation_logprobs(items_in, desc="mmlu")
        items, by_subject, by_cat = [], {}, {}
        for (s, i, q), lp in zip(chosen, scores):
            pred = max(range(4), key=lambda k: lp[k])
            ok = pred == q.answer
            items.append({"subject": s, "index": i, "question": q.question, "answer": "ABCD"[q.answer],
                          "prediction": "ABCD"[pred], "correct": ok, "logprobs": lp})
            by_subject.setdefault(s, []).append(ok)
            by_cat.setdefault(MMLU_SUBJECT_CATEGORY.get(s, "other"), []).append(ok)
        acc = lambda xs: 100.0 * sum(xs) / len(xs)  # noqa: E731
        correct = [it["correct"] for it in items]
        summary = {"n": len(items), "shots": shots_n, "subjects": len(by_subject),
                   "per_subject": {s: {"accuracy": acc(v), "n": len(v)} for s, v in by_subject.items()},
                   "per_category": {c: {"accuracy": acc(v), "n": len(v)} for c, v in sorted(by_cat.items())},
                   "macro_subject_accuracy": sum(acc(v) for v in by_subject.values()) / len(by_subject) if by_subject else None}
        return MetricResult({"mmlu": acc(correct) if correct else None}, summary, items)
