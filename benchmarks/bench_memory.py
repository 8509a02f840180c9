"""Peak memory of a SCAFFOLD run with 10 vs 747 clients (goal: ratio <= 1.1).

    .venv/bin/python -m benchmarks.bench_memory [--rounds 75] [--per-round 10]

Each setting runs in its own process (peak RSS is per process). Both do the same work per round
(10 clients, 1 local step each); with 747 clients most of them end up holding a SCAFFOLD control
variate, so a store that kept them in RAM would grow by hundreds of MB. The model is a random
Llama with a ~1 MB-per-client LoRA state, so the comparison takes minutes, not hours.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_result


def child(num_clients: int, rounds: int, per_round: int, out: Path) -> None:
    import resource

    from fedllm.config import build_config
    from fedllm.data.schema import ClientData, FederatedDataset, InstructionSample
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation

    clients = [ClientData(f"u{i:04d}", train=[InstructionSample.single_turn(f"Say {i} {j}.", f"{i} {j}") for j in range(4)],
                          test=[InstructionSample.single_turn(f"Say {i}.", f"{i}")]) for i in range(num_clients)]
    ds = FederatedDataset.from_clients("mem", clients)
    cfg = build_config({
        "name": f"n{num_clients}", "output_dir": str(out), "model": {"name": "tiny"},
        "lora": {"r": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "data": {"max_length": 32},
        "fl": {"algorithm": "scaffold", "rounds": rounds, "clients_per_round": per_round},
        "train": {"local_steps": 1, "batch_size": 2},
        "eval": {"every": 0, "max_samples_per_client": 1}, "checkpoint": {"every": 5},
    })
    sim = Simulation(cfg, dataset=ds, reporter=Reporter(quiet=True))
    sim.run()
    stored = len(sim.store) if sim.store is not None else 0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clients": num_clients, "peak_rss_mb": peak_mb, "clients_with_state": stored,
                      "adapter_mb": sim.adapter_bytes / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=75)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--child", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.rounds, args.per_round, args.out)
        return
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fedllm-mem-") as tmp:
        for n in (10, 747):
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--child", str(n), "--rounds", str(args.rounds),
                                   "--per-round", str(args.per_round), "--out", tmp], capture_output=True, text=True, check=True)
            rows[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    write_result("memory", {
        "rounds": args.rounds, "clients_per_round": args.per_round, "runs": rows,
        "ratio_747_over_10": rows[747]["peak_rss_mb"] / rows[10]["peak_rss_mb"],
        "state_if_held_in_ram_mb": rows[747]["clients_with_state"] * rows[747]["adapter_mb"],
    })


if __name__ == "__main__":
    main()
