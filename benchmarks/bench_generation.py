"""Answer-generation throughput of the embedded model in `fedllm eval` (KV-cache decoding loop),
by batch size: on a CPU each decoding step reads every weight once, so batching answers together
is the main lever.

    .venv/bin/python -m benchmarks.bench_generation [--batches 1,8,32] [--new 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import median, write_result
from fedllm.config import ModelConfig
from fedllm.data.formatting import get_template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.models.loading import load_base_model

QUESTIONS = ["Write a Python function that reverses a string.", "Explain what a hash table is.",
             "Give three tips for writing clear emails.", "What causes the seasons on Earth?"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per answer (no early stop)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = load_base_model(ModelConfig(precision="fp32", device="cpu"))
    lm = TextModel(base.model, base.tokenizer, base.precision, stop_token_ids=())
    lm.stop_ids = set()  # measure exactly --new tokens per answer
    tpl = get_template("chat", base.tokenizer)
    d = Decoding(temperature=0.0, max_new_tokens=args.new)
    sizes = [int(b) for b in args.batches.split(",")]
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every size alike
        for b in sizes:
            reqs = [GenRequest(str(i), prompt_text([Message("user", QUESTIONS[i % 4])], tpl), d) for i in range(b)]
            t0 = time.perf_counter()
            lm.generate(reqs, batch_size=b)
            times[b].append(time.perf_counter() - t0)
    result = {str(b): {"seconds": times[b], "median_s": median(times[b]),
                       "tokens_per_s": b * args.new / median(times[b])} for b in sizes}
    write_result("generation", {"new_tokens": args.new, "by_batch": result})


if __name__ == "__main__":
    main()
