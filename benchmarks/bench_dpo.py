"""DPO's step cost against SFT's: the same local trainer on the same prompts and preferred replies
(the embedded model, Fed-PyCode-PA), SFT on (prompt, chosen) and DPO on (prompt, chosen, rejected).

    .venv/bin/python -m benchmarks.bench_dpo [--steps 6] [--repeats 3]

A DPO step runs the policy forward and backward on both replies, and the round begins with one
no-grad reference forward over its pairs (the base model, adapter disabled); that reference time is
counted in the DPO round. Tokens are input tokens processed by the policy (chosen + rejected for DPO).
"""

from __future__ import annotations

import argparse

from benchmarks.common import median, write_result
from fedllm.config import build_config
from fedllm.data.schema import InstructionSample, Message
from fedllm.engine.simulation import Session
from fedllm.runs import load_federation
from fedllm.train.batching import draw_round_batches
from fedllm.train.local import LocalTrainer
from fedllm.train.task import Task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--client", default="sympy")
    args = ap.parse_args()
    cfg = build_config({"data": {"dataset": "fed-pycode-pa", "max_length": 256}, "train": {"objective": "dpo"}})
    session = Session.create(cfg)
    tok = session.base.tokenizer
    pairs = load_federation(cfg)[args.client].train[: 2 * args.steps]
    sft_samples = [InstructionSample((*p.prompt, Message("assistant", p.chosen))) for p in pairs]
    tasks = {"sft": (Task.create("sft", "chat", tok, 256), sft_samples),
             "dpo": (Task.create("dpo", "chat", tok, 256, beta=0.1, reference="base"), pairs)}
    init = session.slot.initial_state(0)
    times: dict[str, list[float]] = {k: [] for k in tasks}
    tokens: dict[str, list[int]] = {k: [] for k in tasks}
    for rep in range(args.repeats):
        for name, (task, samples) in tasks.items():  # interleaved, so drift hits both alike
            feats = task.encode(samples).features
            steps = draw_round_batches([task.objective.length(f) for f in feats], args.steps, 2, 1, seed=rep)
            session.slot.load(init)
            trainer = LocalTrainer(session.slot, task.objective, session.base.precision, task.pad_id)
            res = trainer.train(feats, steps, 5e-4)
            times[name].append(res.seconds / res.num_steps)
            tokens[name].append(res.num_tokens / res.num_steps)
            print(f"rep {rep} {name}: {res.seconds / res.num_steps:.2f} s/step, {res.num_tokens / res.seconds:.0f} tok/s",
                  flush=True)
    results = {name: {"median_s_per_step": median(times[name]), "tokens_per_step": median(tokens[name]),
                      "tokens_per_s": median(tokens[name]) / median(times[name]), "runs_s_per_step": times[name]}
               for name in tasks}
    results["dpo_over_sft_step_time"] = results["dpo"]["median_s_per_step"] / results["sft"]["median_s_per_step"]
    results["setup"] = (f"embedded model ({session.base.precision.name}), Fed-PyCode-PA client {args.client}, "
                        f"{args.steps} steps of 2 pairs / samples, max_length 256")
    write_result("dpo", results)


if __name__ == "__main__":
    main()
