"""GSM8K: 8-shot chain of thought (exemplars from the train split, as chat turns with the training
template), greedy decoding, the final number extracted from the answer and compared exactly."""

from __future__ import annotations

from typing import ClassVar

from fedllm.eval.benchdata import load_gsm8k
from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.metrics import register_metric
from fedllm.eval.prompts import extract_gsm8k_answer, gsm8k_messages


def same_number(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    try:
        return abs(float(pred) - float(gold)) < 1e-6
    except ValueError:
        return pred == gold


@register_metric
class GSM8K:
    name: ClassVar[str] = "gsm8k"
    columns: ClassVar[tuple[str, ...]] = ("gsm8k",)
    needs_judge: ClassVar[bool] = False
    description: ClassVar[str] = "GSM8K accuracy (%), 8-shot chain of thought, greedy"

    def run(self, ctx: EvalContext) -> MetricResult:
        shots = load_gsm8k(ctx.data_dir, "train")[: ctx.option("shots", 8)]
        test = ctx.subset(list(enumerate(load_gsm8k(ctx.data_dir, "test"))))
        d = ctx.decoding(temperature=0.0, max_new_tokens=256, stop=("\nQuestion:", "Question:"))
        answers = ctx.generate([(f"gsm8k/{i}", ctx.prompt(gsm8k_messages(shots, q)), d) for i, q in test], desc="gsm8k")
        items = []
        for (i, q), a in zip(test, answers):
            pred = extract_gsm8k_answer(a)
            items.append({"index": i, "question": q.question, "answer": q.answer, "prediction": pred,
                          "correct": same_number(pred, q.answer), "output": a})
        correct = [it["correct"] for it in items]
        summary = {"n": len(items), "shots": len(shots), "no_number": sum(it["prediction"] is None for it in items),
                   "decoding": d.__dict__}
        return MetricResult({"gsm8k": 100.0 * sum(correct) / len(correct) if correct else None}, summary, items)
