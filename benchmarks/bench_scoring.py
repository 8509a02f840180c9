"""MMLU scoring with the few-shot block of a subject run once (what `fedllm eval` does) against every
question's whole prompt run alone: seconds, and whether the predicted letters and log-probabilities agree.

    .venv/bin/python -m benchmarks.bench_scoring --data-dir ../shared/eval-data [--subjects 3] [--questions 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import write_result
from fedllm.config import ModelConfig
from fedllm.eval.benchdata import load_mmlu
from fedllm.eval.generation import TextModel
from fedllm.eval.prompts import MMLU_LETTERS, mmlu_prompt
from fedllm.models.loading import load_base_model
from fedllm.models.stored_weights import store_for_inference


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--questions", type=int, default=10, help="per subject")
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
    dev, test = load_mmlu(args.data_dir, "dev"), load_mmlu(args.data_dir, "test")
    subjects = sorted(test)[: args.subjects]
    items = [(mmlu_prompt(s, dev.get(s, [])[:5], q), MMLU_LETTERS) for s in subjects for q in test[s][: args.questions]]
    base = load_base_model(ModelConfig(name="smollm2-135m-instruct", precision=args.precision))
    base.model.requires_grad_(False)
    store_for_inference(base.model, base.precision)  # as fedllm eval runs it
    lm = TextModel(base.model, base.tokenizer, base.precision)
    lm.continuation_logprobs(*items[0])  # warm-up
    t0 = time.perf_counter()
    alone = [lm.continuation_logprobs(ctx, conts) for ctx, conts in items]
    t_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared = list(lm.continuation_logprobs_each(items))
    t_shared = time.perf_counter() - t0
    same_letter = sum(max(range(4), key=a.__getitem__) == max(range(4), key=b.__getitem__) for a, b in zip(alone, shared))
    diff = max(abs(x - y) for a, b in zip(alone, shared) for x, y in zip(a, b))
    write_result("scoring", {"precision": base.precision.name, "subjects": subjects, "questions": len(items),
                             "seconds_each_whole": round(t_alone, 2), "seconds_block_once": round(t_shared, 2),
                             "speedup": round(t_alone / t_shared, 2), "same_letter": f"{same_letter}/{len(items)}",
                             "max_logprob_difference": diff})


if __name__ == "__main__":
    main()
