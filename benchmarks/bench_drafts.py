"""Prompt-lookup drafts in `fedllm eval`'s decoding loop: time and answers with and without them, on
HumanEval (answers end at the scored block, as the metric decodes) and on short chat questions.

    .venv/bin/python -m benchmarks.bench_drafts [--problems 64] [--drafts 0,4] [--precisions fp32,bf16-stored]

Greedy answers are the same with drafts in exact arithmetic; fp32 shows it (every answer compared),
while bf16's rounding moves with how many positions a forward carries, as it does with the batch size.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from benchmarks.bench_generation import chat_prompts, decoding_models
from benchmarks.common import write_result
from fedllm.config import ModelConfig
from fedllm.data.formatting import get_template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval import humaneval as he
from fedllm.eval.generation import Decoding, GenRequest
from fedllm.eval.runner import end_of_turn_ids
from fedllm.models.loading import load_base_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=64, help="HumanEval problems (the first N)")
    ap.add_argument("--chat", type=int, default=32, help="chat answers of up to --new tokens")
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--drafts", default="0,4", help="draft lengths to compare (0: one token a step)")
    ap.add_argument("--precisions", default="fp32,bf16-stored")
    args = ap.parse_args()
    base = load_base_model(ModelConfig(precision="fp32", device="cpu"))
    tpl = get_template("chat", base.tokenizer)
    d = Decoding(temperature=0.0, max_new_tokens=args.new)
    sets = {
        "humaneval": [GenRequest(p.task_id, prompt_text([Message("user", he.chat_prompt(p))], tpl),
                                 replace(d, end_after_block_defining=p.entry_point)) for p in he.load_problems()[:args.problems]],
        "chat": [GenRequest(str(i), p, d) for i, p in enumerate(chat_prompts(base.tokenizer, args.chat))],
    }
    drafts = [int(k) for k in args.drafts.split(",")]
    result: dict[str, dict] = {}
    stop_ids = {int(i) for i in end_of_turn_ids(base.tokenizer)} | {int(base.tokenizer.eos_token_id)}
    for name, lm in decoding_models(base, args.precisions.split(","), stop_ids=stop_ids).items():
        forwards: list[int] = []  # positions per row of each forward (prefills included)
        lm.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape[1]))
        for set_name, reqs in sets.items():
            answers, row = {}, {}
            for k in drafts:
                lm.draft_tokens = k
                forwards.clear()
                t0 = time.perf_counter()
                answers[k] = lm.generate(reqs, batch_size=args.batch)
                row[str(k)] = {"seconds": time.perf_counter() - t0,
                               "tokens": sum(len(lm.encode(a)) for a in answers[k]),
                               "answers_equal_to_first": sum(a == b for a, b in zip(answers[k], answers[drafts[0]])),
                               "forwards": len(forwards), "wide_forwards": sum(1 < w <= 1 + k for w in forwards)}
                print(name, set_name, k, row[str(k)], flush=True)
            result[f"{name}/{set_name}"] = row
    write_result("drafts", {"requests": {k: len(v) for k, v in sets.items()}, "batch": args.batch, "by_path": result})


if __name__ == "__main__":
    main()
