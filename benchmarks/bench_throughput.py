"""Training tokens/s of the embedded model (LoRA, fedllm's trainer step): fp32, bf16 autocast, what
``precision: auto`` picks, and bf16 with the decoder compiled by ``torch.compile``; and the share of
this machine's measured matmul peak (GFLOP/s at the model's own shapes) that a step reaches.

    .venv/bin/python -m benchmarks.bench_throughput [--steps 3] [--batch 2] [--length 256] [--no-compile]

Which precision is faster depends on the CPU (AMX makes bf16 fast; avx512_bf16 alone may not), which is
why ``model.precision: auto`` decides by measurement; this benchmark shows the numbers for this machine.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import median, write_result
from fedllm.config import build_config
from fedllm.engine.simulation import Session
from fedllm.models.calibration import shapes_of
from fedllm.models.precision import Precision, resolve_precision
from fedllm.train.cost import ModelShape, train_flops
from fedllm.train.objectives import get_objective


def matmul_peak(precision: str, hidden: int, inter: int, tokens: int, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of the model's frozen-weight matmuls (x·Wᵀ for q/o, up and down) at ``tokens`` rows, in
    ``precision``'s autocast: the best of ``reps`` per shape, and the FLOP-weighted rate over the three."""
    gen = torch.Generator().manual_seed(0)
    rates, flops_total, secs_total = {}, 0.0, 0.0
    for name, (out_f, in_f) in {"d x d": (hidden, hidden), "f x d": (inter, hidden), "d x f": (hidden, inter)}.items():
        x, w = torch.randn(tokens, in_f, generator=gen), torch.randn(out_f, in_f, generator=gen)
        best = float("inf")
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                x @ w.T
            best = min(best, time.perf_counter() - t0)
        flops = 2.0 * tokens * in_f * out_f
        rates[name] = flops / best / 1e9
        flops_total += flops
        secs_total += best
    return {**rates, "weighted": flops_total / secs_total / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
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
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    decoder = model.get_base_model().get_decoder()
    eager_forward = decoder.forward
    compiled_forward: Any = None

    def step(name: str) -> float:
        nonlocal compiled_forward
        prec = Precision("fp32" if name == "fp32" else "bf16", torch.device("cpu"))
        if name == "compiled" and compiled_forward is None:
            compiled_forward = torch.compile(eager_forward)
        decoder.forward = compiled_forward if name == "compiled" else eager_forward
        t0 = time.perf_counter()
        with prec.autocast():
            loss, n = objective.loss_sum(model, batch)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        decoder.forward = eager_forward
        return time.perf_counter() - t0

    variants = ["fp32", "bf16"] + ([] if args.no_compile else ["compiled"])
    times: dict[str, list[float]] = {v: [] for v in variants}
    first: dict[str, float] = {}
    for rep in range(args.steps + 1):  # interleaved, so drift on a shared machine hits every variant alike
        for name in variants:
            s = step(name)
            if rep == 0:
                first[name] = s  # warm-up; for the compiled variant, compilation included
            else:
                times[name].append(s)
            print(f"step {rep} {name}: {s:.2f}s", flush=True)
    tokens = args.batch * args.length
    shape = ModelShape.of(model)
    step_flops = train_flops(shape, tokens, int((labels[:, 1:] != -100).sum()))
    hidden, inter = shapes_of(model)
    peaks = {p: matmul_peak(p, hidden, inter, tokens) for p in ("fp32", "bf16")}
    auto, why = resolve_precision("auto", torch.device("cpu"), model, None)  # measured now, not cached
    results: dict[str, Any] = {}
    for name, ts in times.items():
        prec = "fp32" if name == "fp32" else "bf16"
        gflops = step_flops / median(ts) / 1e9
        results[name] = {"median_step_s": median(ts), "tokens_per_s": tokens / median(ts), "steps": len(ts),
                         "first_step_s": first[name], "gflop_per_s": gflops,
                         "share_of_matmul_peak": gflops / peaks[prec]["weighted"]}
    if "compiled" in results:
        c = results["compiled"]
        saved = results["bf16"]["median_step_s"] - c["median_step_s"]
        c["compile_s"] = c["first_step_s"] - c["median_step_s"]
        c["steps_to_amortise"] = c["compile_s"] / saved if saved > 0 else None
    results["auto"] = {"picks": auto, **why, **results[auto]}
    results["bf16_over_fp32_speed"] = results["bf16"]["tokens_per_s"] / results["fp32"]["tokens_per_s"]
    results["matmul_peak_gflop_per_s"] = peaks
    results["step_gflop"] = step_flops / 1e9
    results["shape"] = f"batch {args.batch} x {args.length} tokens, LoRA r=16 q/k/v/o"
    write_result("throughput", results)


if __name__ == "__main__":
    main()
