"""Deployment overhead: the same run in-process (`fedllm train`'s engine) and on Flower (a SuperLink and
N SuperNodes on loopback, `fedllm launch`'s processes), seconds per round and bytes per round; with
``--secagg``, also the same deployment under SecAgg+ (at least 3 nodes).

    .venv/bin/python -m benchmarks.bench_flower [--model tiny|smollm2-135m-instruct] [--rounds 3]
    .venv/bin/python -m benchmarks.bench_flower --nodes 3 --secagg

Bytes: the engine's own count (the fedllm message blobs) against what crossed the loopback interface
during the run (/proc/net/dev; HTTP, polling, the census and federated evaluation included).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import median, write_result
from fedllm.config import build_config, dump_config
from fedllm.engine.flower.deploy import Security, start_link
from fedllm.engine.flower.launch import Cluster, free_port, submit, write_app


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            f = line.split(":", 1)[1].split()
            return int(f[0])  # received on lo (= sent on lo)
    return 0


def rounds(run_dir: Path) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if e["event"] == "round"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--secagg", action="store_true", help="also run the deployment under SecAgg+")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-flower-"))
    fed = tmp / "fed.json"
    from tests.conftest import synthetic_records

    fed.write_text(json.dumps(synthetic_records()))
    base = {"name": "b", "output_dir": str(tmp / "inproc"), "seed": 0, "model": {"name": args.model},
            "lora": {"r": 8, "alpha": 16}, "data": {"dataset": str(fed), "max_length": 128},
            "fl": {"algorithm": "fedavg", "rounds": args.rounds, "clients_per_round": args.nodes},
            "train": {"local_steps": args.steps, "batch_size": 2, "lr": 1e-3},
            "eval": {"every": 0}, "checkpoint": {"every": 0}, "deploy": {"min_nodes": args.nodes, "node_wait": 300}}
    cfg = build_config(base)
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.runs import load_federation

    Simulation(cfg, dataset=load_federation(cfg), reporter=Reporter(quiet=True)).run()
    ip = rounds(cfg.run_dir)
    result = {"model": args.model, "rounds": args.rounds, "nodes": args.nodes, "clients_per_round": args.nodes,
              "local_steps": args.steps, "in_process_s_per_round": median([e["seconds"] for e in ip])}
    modes = {"deployed": {}} | ({"secagg": {"secagg": {"clipping_range": 1.0}}} if args.secagg else {})
    for mode, extra in modes.items():
        dep_cfg = build_config({**base, "output_dir": str(tmp / mode), "deploy": {**base["deploy"], **extra}})
        with Cluster(tmp / f"work-{mode}") as c:
            port = free_port()
            home = start_link(c, Security(), "127.0.0.1", port, lambda s: None)
            for i in range(args.nodes):
                c.supernode(f"node-{i}", f"127.0.0.1:{port}", free_port(),
                            {"partition-id": i, "num-partitions": args.nodes}, None)
            app = write_app(c.workdir / "app", dump_config(dep_cfg), Path(dep_cfg.output_dir))
            lo0, t0 = loopback_bytes(), time.perf_counter()
            run = submit(c, app, home)
            assert run.wait(timeout=3000) == 0, c.logs["flwr-run"].read_text()[-2000:]
            wall, lo = time.perf_counter() - t0, loopback_bytes() - lo0
        dp = rounds(dep_cfg.run_dir)
        engine_bytes = sum(e["bytes_up"] + e["bytes_down"] for e in dp)
        result[mode] = {
            "s_per_round": median([e["seconds"] for e in dp]),
            "overhead_s_per_round": median([e["seconds"] for e in dp]) - result["in_process_s_per_round"],
            "wall_s_total": wall,
            "engine_bytes_per_round": engine_bytes / args.rounds,
            "loopback_bytes_per_round": lo / args.rounds,
            "loopback_over_engine": lo / max(engine_bytes, 1),
        }
    write_result(f"flower_{args.model}_{args.nodes}n" + ("_secagg" if args.secagg else ""), result)
    print(yaml.safe_dump(result, sort_keys=False))


if __name__ == "__main__":
    main()
