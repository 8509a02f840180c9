"""Federation overhead: wall time of a FedAvg simulation vs a plain PyTorch loop doing the same
optimizer steps on the same batches with the same model (goal: ratio <= 1.05).

    .venv/bin/python -m benchmarks.bench_overhead [--rounds 2] [--clients 2] [--steps 4] [--repeats 3]

The plain loop is what a user would write by hand: per (round, client) a fresh AdamW, the
batches fedllm draws, ``loss.backward(); clip; step``; no aggregation, metrics, checkpoints or
evaluation. Two variants: the same loss function as fedllm (pure overhead), and HF's
``model(..., labels=...)`` loss (what a hand-written loop usually does).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import median, write_result
from fedllm.config import build_config
from fedllm.data.formatting import get_template
from fedllm.engine.progress import Reporter
from fedllm.engine.simulation import Session, Simulation, cosine_lr
from fedllm.fl.sampling import sample_uniform
from fedllm.runs import load_federation
from fedllm.seeding import derive_seed
from fedllm.train.batching import draw_round_batches
from fedllm.train.objectives import get_objective, to_device


def plain_loop(cfg, session, dataset, use_hf_loss: bool) -> float:
    """The same optimizer steps as the simulation, written as a bare loop."""
    slot, model = session.slot, session.base.model
    tok = session.base.tokenizer
    objective = get_objective("sft")
    template = get_template(cfg.data.template, tok)
    ids = dataset.client_ids[: cfg.data.max_clients] if cfg.data.max_clients else dataset.client_ids
    init = slot.initial_state(derive_seed(cfg.seed, "lora-init"))
    t = cfg.train
    t0 = time.perf_counter()
    model.train()
    for r in range(cfg.fl.rounds):
        lr = cosine_lr(r, cfg.fl.rounds, t.lr, t.lr_min)
        for cid in sample_uniform(ids, cfg.fl.clients_per_round, cfg.seed, r):
            feats = [objective.encode(s, template, tok, cfg.data.max_length) for s in dataset[cid].train]
            steps = draw_round_batches([len(f["input_ids"]) for f in feats], int(t.local_steps), t.batch_size,
                                       t.grad_accum, derive_seed(cfg.seed, "batches", r, cid), t.group_by_length)
            slot.load(init)
            torch.manual_seed(derive_seed(cfg.seed, "torch", r, cid))
            params = list(slot.params.values())
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)
            for micro in steps:
                opt.zero_grad(set_to_none=True)
                for mb in micro:
                    batch = to_device(objective.collate([feats[i] for i in mb], tok.pad_token_id), session.base.device)
                    if use_hf_loss:
                        loss = model(**batch).loss / len(micro)
                    else:
                        s, n = objective.loss_sum(model, batch)
                        loss = s / max(n, 1)
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fedllm-overhead-"))
    base = {
        "output_dir": str(out), "model": {"precision": "fp32"},
        "data": {"dataset": "fed-pycode", "test_fraction": 0.0, "max_length": 256},
        "fl": {"algorithm": "fedavg", "rounds": args.rounds, "clients_per_round": args.clients},
        "train": {"local_steps": args.steps, "batch_size": 2, "lr": 5e-4},
        "eval": {"every": 0}, "checkpoint": {"every": 1},
    }
    cfg0 = build_config(base)
    session = Session.create(cfg0)
    dataset = load_federation(cfg0)
    sim_t, plain_t, hf_t = [], [], []
    for rep in range(args.repeats):
        cfg = build_config(base, [f"name=rep{rep}"])
        t0 = time.perf_counter()
        Simulation(cfg, session=session, dataset=dataset, reporter=Reporter(quiet=True)).run()
        sim_t.append(time.perf_counter() - t0)
        plain_t.append(plain_loop(cfg, session, dataset, use_hf_loss=False))
        hf_t.append(plain_loop(cfg, session, dataset, use_hf_loss=True))
    shutil.rmtree(out, ignore_errors=True)
    steps = args.rounds * args.clients * args.steps
    write_result("overhead", {
        "optimizer_steps": steps, "repeats": args.repeats,
        "simulation_s": sim_t, "plain_loop_same_loss_s": plain_t, "plain_loop_hf_loss_s": hf_t,
        "ratio_sim_over_plain_same_loss": median(sim_t) / median(plain_t),
        "ratio_sim_over_plain_hf_loss": median(sim_t) / median(hf_t),
        "note": "simulation time includes setup of the run dir, data encoding, aggregation, metrics, checkpoints and the final adapter save",
    })


if __name__ == "__main__":
    main()
