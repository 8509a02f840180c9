"""The quickstart's paired comparison: the statistics against numbers computed by hand, per-sample
losses against the pooled held-out loss they must reproduce, and two real runs compared."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedllm.bench.paired import describe, paired_comparison, sign_flip_p
from tests.conftest import run_sim, synthetic_federation, tiny_config


def test_client_interval_is_a_t_interval_over_client_means() -> None:
    # client means of A − B: 1, 2, 3 → mean 2, sd 1, se 1/√3, t(0.975, 2) = 4.302653
    a = {"x": [2.0, 2.0], "y": [3.0], "z": [3.0, 4.0, 5.0]}
    b = {"x": [1.0, 1.0], "y": [1.0], "z": [1.0, 1.0, 1.0]}  # diffs: x 1,1; y 2; z 2,3,4
    c = paired_comparison(a, b)
    assert c.n_clients == 3 and c.n_samples == 6
    assert c.client_mean_diff == pytest.approx(2.0)
    half = 4.302653 / math.sqrt(3)
    assert c.client_ci == pytest.approx((2 - half, 2 + half), abs=1e-5)
    # samples: 1,1,2,2,3,4 → mean 13/6, sd 1.169045 (ddof 1), t(0.975, 5) = 2.570582
    h = 2.570582 * 1.169045 / math.sqrt(6)
    assert c.mean_diff == pytest.approx(13 / 6)
    assert c.sample_ci == pytest.approx((13 / 6 - h, 13 / 6 + h), abs=1e-5)
    assert c.a_better == 0  # A's loss is higher on every sample
    # the samples' interval excludes 0, but three clients cannot show it: the client is the unit
    assert c.sample_ci[0] > 0 and c.client_ci[0] < 0 and not c.significant and c.p_value == pytest.approx(0.25)
    assert "not significant" in describe(c, "FedAvg", "Local")
    more = paired_comparison({str(i): [1.0 + 0.1 * (i % 3)] for i in range(12)}, {str(i): [0.5] for i in range(12)})
    assert more.significant and "Local is better" in describe(more, "FedAvg", "Local")


def test_sign_flip_p_is_exact_for_few_clients() -> None:
    # three equal differences: 8 sign patterns, only all-plus and all-minus reach |mean| = 1
    assert sign_flip_p(np.array([1.0, 1.0, 1.0])) == pytest.approx(2 / 8)
    # 1, 2, -3: |mean| = 0 observed, every pattern reaches it
    assert sign_flip_p(np.array([1.0, 2.0, -3.0])) == 1.0
    # many clients: a seeded Monte Carlo draw, reproducible, and small for a consistent sign
    many = np.full(30, 0.5)
    assert sign_flip_p(many, seed=1) == sign_flip_p(many, seed=1) < 0.001


def test_identical_models_differ_by_nothing_and_bad_input_is_named() -> None:
    a = {"x": [1.0, float("nan"), 2.0], "y": [3.0, 4.0]}
    c = paired_comparison(a, a)
    assert c.n_samples == 4 and c.mean_diff == 0.0 and c.p_value == 1.0 and not c.significant
    assert "not significant" in describe(c, "A", "B")
    with pytest.raises(ValueError, match="different clients"):
        paired_comparison(a, {"x": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="client y: 2 vs 1"):
        paired_comparison(a, {"x": [1.0, 2.0, 3.0], "y": [1.0]})


def test_sample_losses_reproduce_the_pooled_loss_and_compare_two_runs(tmp_path) -> None:
    from fedllm.bench.quickstart import paired_heldout
    from fedllm.eval.heldout import evaluate_heldout, sample_losses

    fed = synthetic_federation(num_clients=4, per_client=12, test_per_client=3)
    sim_a, _ = run_sim(tiny_config(tmp_path, name="a"), dataset=fed)
    sim_b, _ = run_sim(tiny_config(tmp_path, name="b", fl={"algorithm": "local", "rounds": 3,
                                                           "clients_per_round": 1}), dataset=fed)
    task, precision = sim_a.task, sim_a.session.base.precision
    feats = sim_a.evaluator.features
    per_sample = sample_losses(sim_a.slot.model, task.objective, feats, task.pad_id, precision, batch_size=2)
    pooled = evaluate_heldout(sim_a.slot.model, task.objective, feats, task.pad_id, precision, batch_size=2)
    # a sample's mean loss times its labelled tokens, summed, is the pooled token loss
    tokens = {cid: [f["num_trainable"] for f in fs] for cid, fs in feats.items()}
    total = sum(l * n for cid in feats for l, n in zip(per_sample[cid], tokens[cid]))
    assert total / sum(sum(v) for v in tokens.values()) == pytest.approx(pooled.pooled_loss, rel=1e-5)

    same = paired_heldout(sim_a, [sim_a.run_dir, sim_a.run_dir], per_client=2, console=None)
    assert same.mean_diff == 0.0 and same.n_samples == 8 and same.n_clients == 4
    diff = paired_heldout(sim_a, [sim_a.run_dir, sim_b.run_dir], per_client=2, console=None)
    assert diff.n_samples == 8 and diff.mean_diff != 0.0
    assert paired_heldout(sim_a, [sim_a.run_dir, sim_b.run_dir], per_client=0, console=None) is None


def test_runs_that_start_alike_evaluate_round_zero_once(tmp_path) -> None:
    """The quickstart's two runs share a model and start from the same adapter: the second run's round-0
    evaluation is the first's, read back; every other evaluation runs, and the histories are those of
    separate evaluators."""
    import json

    from fedllm.bench.quickstart import SharedStart
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Session, Simulation
    from fedllm.eval.heldout import HeldoutEvaluator

    fed = synthetic_federation(num_clients=3, per_client=8, test_per_client=2)
    ev = {"every": 1, "at_start": True}

    def histories(shared: bool, out) -> tuple[list[list[float]], int]:
        cfgs = [tiny_config(out, name="a", fl={"rounds": 2}, eval=ev),
                tiny_config(out, name="b", fl={"algorithm": "local", "rounds": 2, "clients_per_round": 1}, eval=ev)]
        session, calls = Session.create(cfgs[0]), []
        inner = HeldoutEvaluator.from_config(cfgs[0].eval)
        real = inner.__class__.__call__
        counting = type("Counting", (HeldoutEvaluator,), {"__call__": lambda self, m: calls.append(1) or real(self, m)})
        inner.__class__ = counting
        shared_ev = SharedStart(inner)
        for cfg in cfgs:
            evaluator = shared_ev if shared else SharedStart(counting(cfg.eval.batch_size, cfg.eval.max_samples_per_client))
            Simulation(cfg, session=session, dataset=fed, reporter=Reporter(quiet=True), evaluator=evaluator).run()
        rows = [[json.loads(line)["pooled_loss"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "eval"] for cfg in cfgs]
        return rows, len(calls)

    shared, n_shared = histories(True, tmp_path / "shared")
    separate, n_separate = histories(False, tmp_path / "separate")
    assert shared == separate and len(shared[0]) == 3 and shared[0][0] == shared[1][0]
    assert n_shared == 5 and n_separate == 6
