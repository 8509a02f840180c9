"""Answer-generation throughput of the embedded model in `fedllm eval` (KV-cache decoding loop),
by batch size: on a CPU each decoding step reads every weight once, so batching answers together
is the main lever.

    .venv/bin/python -m benchmarks.bench_generation [--batches 1,8,32] [--new 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch

from benchmarks.common import median, write_result
from fedllm.config import ModelConfig
from fedllm.data.formatting import get_template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.models.loading import load_base_model
from fedllm.models.precision import Precision
from fedllm.models.stored_weights import store_frozen_linears

QUESTIONS = ["Write a Python function that reverses a string.", "Explain what a hash table is.",
             "Give three tips for writing clear emails.", "What causes the seasons on Earth?"]


def decoding_models(base: Any, names: list[str], draft_tokens: int = 0,
                    stop_ids: set[int] | None = None) -> dict[str, TextModel]:
    """fedllm's decoding loop per precision name (fp32, bf16 autocast, bf16-stored: autocast over frozen
    weights stored in bf16 and held in oneDNN's layout where it runs bf16, what fedllm eval runs;
    bf16-unpacked: stored in bf16 only), each generating exactly max_new_tokens unless given ``stop_ids``,
    one token a step unless ``draft_tokens`` (prompt-lookup drafts, see bench_drafts)."""
    models = {}
    for n in names:
        model = base.model
        if n in ("bf16-stored", "bf16-unpacked"):
            model = copy.deepcopy(base.model).requires_grad_(False)  # frozen, as fedllm eval loads it
            store_frozen_linears(model, torch.bfloat16, pack=n == "bf16-stored")
        models[n] = TextModel(model, base.tokenizer, Precision(n.split("-")[0], base.device), stop_token_ids=(),
                              draft_tokens=draft_tokens)
        models[n].stop_ids = set(stop_ids or ())
    return models


def chat_prompts(tokenizer: Any, rows: int) -> list[str]:
    """``rows`` chat prompts cycling over QUESTIONS, rendered with the chat template."""
    tpl = get_template("chat", tokenizer)
    return [prompt_text([Message("user", QUESTIONS[i % len(QUESTIONS)])], tpl) for i in range(rows)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per answer (no early stop)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16 (autocast), bf16-stored "
                                                         "(autocast, frozen weights stored in bf16, held in oneDNN's "
                                                         "layout), bf16-unpacked (stored only); interleaved")
    args = ap.parse_args()
    base = load_base_model(ModelConfig(precision="fp32", device="cpu"))
    names = args.precisions.split(",")
    models = decoding_models(base, names)
    d = Decoding(temperature=0.0, max_new_tokens=args.new)
    sizes = [int(b) for b in args.batches.split(",")]
    outputs: dict[str, list[str]] = {}
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in names for b in sizes}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every size and precision alike
        for b in sizes:
            reqs = [GenRequest(str(i), p, d) for i, p in enumerate(chat_prompts(base.tokenizer, b))]
            for n, lm in models.items():
                t0 = time.perf_counter()
                outputs[n] = lm.generate(reqs, batch_size=b)
                times[n, b].append(time.perf_counter() - t0)
    same = {n: outputs[n] == outputs[names[0]] for n in names}
    result = {n: {str(b): {"seconds": times[n, b], "median_s": median(times[n, b]),
                           "tokens_per_s": b * args.new / median(times[n, b])} for b in sizes} for n in names}
    write_result("generation", {"new_tokens": args.new, "by_precision_and_batch": result,
                                "last_answers_equal_to_first_precision": same})


if __name__ == "__main__":
    main()
