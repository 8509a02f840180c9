"""HumanEval answers generated to max_new_tokens against answers ended at the scored code block:
time, tokens, and whether every extracted program is the same (fp32, where answers are exact).

    .venv/bin/python -m benchmarks.bench_humaneval_stop [--problems 164] [--new 256] [--batch 32]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from benchmarks.common import write_result
from fedllm.config import ModelConfig
from fedllm.data.formatting import get_template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval import humaneval as he
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.eval.runner import end_of_turn_ids
from fedllm.models.loading import load_base_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=164)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    base = load_base_model(ModelConfig(precision="fp32", device="cpu"))
    base.model.requires_grad_(False)
    tpl = get_template("chat", base.tokenizer)
    problems = he.load_problems()[: args.problems]
    lm = TextModel(base.model, base.tokenizer, base.precision, end_of_turn_ids(base.tokenizer), draft_tokens=0)  # as in (d‴)
    d = Decoding(temperature=0.0, max_new_tokens=args.new)
    out: dict[str, tuple[float, list[str]]] = {}
    for name in ("whole", "ended"):
        reqs = [GenRequest(p.task_id, prompt_text([Message("user", he.chat_prompt(p))], tpl),
                           d if name == "whole" else replace(d, end_after_block_defining=p.entry_point)) for p in problems]
        t0 = time.perf_counter()
        answers = lm.generate(reqs, batch_size=args.batch)
        out[name] = (time.perf_counter() - t0, answers)
    whole, ended = out["whole"][1], out["ended"][1]
    write_result("humaneval_stop", {
        "seconds": {k: v[0] for k, v in out.items()},
        "tokens": {k: sum(len(lm.encode(a)) for a in v[1]) for k, v in out.items()},
        "programs_equal": sum(he.extract_code(a, p) == he.extract_code(b, p) for a, b, p in zip(whole, ended, problems)),
        "answers_are_prefixes": sum(a.startswith(b) for a, b in zip(whole, ended)), "problems": len(problems)})


if __name__ == "__main__":
    main()
