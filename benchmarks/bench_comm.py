"""Message size against quality: bytes per round and final held-out loss of the quickstart's FedAvg
run (embedded model, Fed-PyCode) for each message codec and for FFA-LoRA (goal: ≤ 0.25× the fp32
bytes at ≤ 1% change in final held-out loss).

    .venv/bin/python -m benchmarks.bench_comm [--rounds 8]

Every variant trains the same clients on the same batches from the same seed; the codec applies to
both directions (error feedback on the uplink). Bytes are the lengths of the encoded messages.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import write_result
from fedllm.bench.quickstart import quickstart_configs
from fedllm.engine.metrics import read_metrics
from fedllm.engine.progress import Reporter
from fedllm.engine.simulation import Session, Simulation
from fedllm.eval.heldout import HeldoutEvaluator
from fedllm.runs import load_federation

INT8 = {"quantize": "int8", "scale": "rank"}
VARIANTS: dict[str, list[str]] = {
    "fp32": [],
    "fp16": ["comm.up.dtype=fp16", "comm.down.dtype=fp16"],
    "int8": [f"comm.up={INT8}", f"comm.down={INT8}"],
    "int8+zstd": [f"comm.up={dict(INT8, zstd=3)}", f"comm.down={dict(INT8, zstd=3)}"],
    "ffa-lora": ["lora.freeze_a=true"],
    "ffa-lora+int8+zstd": ["lora.freeze_a=true", f"comm.up={dict(INT8, zstd=3)}", f"comm.down={dict(INT8, zstd=3)}"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fedllm-comm-"))
    base = [f"fl.rounds={args.rounds}", "eval.every=0", "eval.at_start=false"]
    dataset = None
    sessions: dict[str, Session] = {}
    rows = {}
    for name, extra in VARIANTS.items():
        cfg, _ = quickstart_configs(out, [*base, *extra, f"name={name.replace('+', '-')}"])
        dataset = dataset or load_federation(cfg)
        key = Session.key(cfg)
        session = sessions.get(key) or sessions.setdefault(key, Session.create(cfg))
        summary = Simulation(cfg, session=session, dataset=dataset, reporter=Reporter(quiet=True),
                             evaluator=HeldoutEvaluator.from_config(cfg.eval)).run()
        rounds = read_metrics(cfg.run_dir / "metrics.jsonl", "round")
        per_round = [r["bytes_up"] + r["bytes_down"] for r in rounds]
        rows[name] = {"bytes_per_round": sum(per_round) / len(per_round),
                      "bytes_up_per_round": sum(r["bytes_up"] for r in rounds) / len(rounds),
                      "bytes_down_per_round": sum(r["bytes_down"] for r in rounds) / len(rounds),
                      "heldout_loss": summary["final_eval"]["pooled_loss"], "train_seconds": summary["train_seconds"]}
        print(name, rows[name], flush=True)
    ref = rows["fp32"]
    for r in rows.values():
        r["bytes_ratio"] = r["bytes_per_round"] / ref["bytes_per_round"]
        r["loss_change_pct"] = 100 * (r["heldout_loss"] - ref["heldout_loss"]) / ref["heldout_loss"]
    shutil.rmtree(out, ignore_errors=True)
    write_result("comm", {"rounds": args.rounds, "variants": VARIANTS, "results": rows,
                          "goal": "bytes_ratio <= 0.25 at |loss_change_pct| <= 1"})


if __name__ == "__main__":
    main()
