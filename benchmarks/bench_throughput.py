"""Training tokens/s of the embedded model (LoRA, fedllm's trainer step), fp32 vs bf16 autocast.

    .venv/bin/python -m benchmarks.bench_throughput [--steps 3] [--batch 4] [--length 256]

Which is faster depends on the CPU (AMX makes bf16 fast; avx512_bf16 alone does not), which is why
``model.precision: auto`` decides at run time; this benchmark shows the numbers for this machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import median, write_result
from fedllm.config import build_config
from fedllm.engine.simulation import Session
from fedllm.models.precision import Precision, resolve_precision
from fedllm.train.objectives import get_objective


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    args = ap.parse_args()
    cfg = build_config({"model": {"precision": "fp32"}})
    session = Session.create(cfg)
    model, slot = session.base.model, session.slot
    objective = get_objective("sft")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40000, (args.batch, args.length), generator=gen)
    labels = ids.clone()
    labels[:, : args.length // 2] = -100  # half prompt, half answer, like chat samples
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    params = list(slot.params.values())
    results = {}
    # interleave the precisions so drift on a shared machine hits both alike
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    for rep in range(args.steps + 1):
        for name in ("fp32", "bf16"):
            prec = Precision(name, torch.device("cpu"))
            t0 = time.perf_counter()
            with prec.autocast():
                loss, n = objective.loss_sum(model, batch)
            (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if rep > 0:  # the first step of each precision is warm-up
                times[name].append(time.perf_counter() - t0)
            print(f"step {rep} {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    tokens = args.batch * args.length
    for name, ts in times.items():
        results[name] = {"median_step_s": median(ts), "tokens_per_s": tokens / median(ts), "steps": len(ts)}
    results["bf16_over_fp32_speed"] = results["bf16"]["tokens_per_s"] / results["fp32"]["tokens_per_s"]
    auto, why = resolve_precision("auto", torch.device("cpu"), model, None)  # measured now, not cached
    results["auto_picks"] = {"precision": auto, **why}
    results["shape"] = f"batch {args.batch} x {args.length} tokens, LoRA r=16 q/k/v/o"
    write_result("throughput", results)


if __name__ == "__main__":
    main()
