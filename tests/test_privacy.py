"""Differential privacy mechanisms (clipping, noise of the stated std, reported ε) and their runs end
to end: resumable bit for bit with the same ε, bad settings refused, FFA-LoRA under DP."""

from __future__ import annotations

import json

import pytest
import torch

from fedllm.config import ConfigError, build_config
from fedllm.engine.metrics import read_metrics
from fedllm.engine.simulation import RunError
from fedllm.fl import ClientContext, ClientUpdate, Federation, FLParams, build_algorithm
from fedllm.fl import state as S
from fedllm.fl.privacy import DpFedAvgAccounting, fedllm_bench_sigma, local_dp_epsilon
from fedllm.fl.registries import TRANSFORMS
from fedllm.models.adapters import load_adapter_state
from fedllm.seeding import derive_seed
from safetensors.torch import load_file
from tests.conftest import kill_in_round, tiny_config
from tests.conftest import run_sim as run

FED = Federation(num_clients=10, clients_per_round=4, rounds=20, total_samples=500, lr=0.01, seed=3)


def zeros(n: int = 40_000) -> dict[str, torch.Tensor]:
    return {"a": torch.zeros(n // 2, dtype=torch.float64), "b": torch.zeros(2, n // 4, dtype=torch.float64)}


def pooled(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in state.values()])


# ------------------------------------------------------------------ mechanisms


def test_fedllm_bench_noise_has_the_formula_std_on_every_upload():
    alg = build_algorithm(FLParams("fedavg", weighting="uniform", dp={"mode": "fedllm-bench", "epsilon": 0.5}), 10, FED)
    sigma = fedllm_bench_sigma(0.5, 1e-4, 0.01, 1.0, 500, 10, 4, 20)
    assert alg.dp.sigma == sigma
    out = alg.step(zeros(), [ClientUpdate(f"c{i}", zeros(), 1) for i in range(4)])
    # the mean of 4 independently noised zero updates: std σ/2
    got = pooled(out.state).std().item()
    assert got == pytest.approx(sigma / 2, rel=0.02)
    rep = alg.report()["dp"]
    assert rep["epsilon"] is None and rep["nominal_epsilon"] == 0.5 and "No formal guarantee" in rep["guarantee"]


def test_dp_fedavg_clips_each_update_and_noises_the_sum():
    dp = TRANSFORMS.lookup("dp-fedavg")(build_config({"fl": {"dp": {"mode": "dp-fedavg", "noise_multiplier": 2.0,
                                                                      "clip": 0.5}}}).fl.dp)
    dp.bind(FED)
    dp.begin_round()
    gen = torch.Generator().manual_seed(0)
    big = {"x": torch.randn(100, generator=gen, dtype=torch.float64) * 3}
    small = {"x": big["x"] / (10 * S.norm(big))}  # norm 0.1 < C
    clipped = dp.on_update(ClientUpdate("a", S.clone(big), 1), {}).delta
    kept = dp.on_update(ClientUpdate("b", S.clone(small), 1), {}).delta
    assert S.norm(clipped) == pytest.approx(0.5) and torch.allclose(clipped["x"] / 0.5, big["x"] / S.norm(big))
    assert torch.equal(kept["x"], small["x"])  # under C: unchanged
    # aggregate of zero updates: N(0, (z·C)²)/S per entry
    updates = [ClientUpdate(f"c{i}", zeros(), 1) for i in range(3)]
    out = dp.on_aggregate(zeros(), updates)
    assert pooled(out).std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    assert dp.releases == 1


@pytest.mark.parametrize("sampling,accountant", [("uniform", "rdp"), ("poisson", "rdp"), ("poisson", "pld")])
def test_dp_fedavg_reports_the_accountants_epsilon_every_round(sampling, accountant):
    fed = Federation(num_clients=10, clients_per_round=4, rounds=5, sampling=sampling, seed=0)
    params = FLParams("fedavg", dp={"mode": "dp-fedavg", "noise_multiplier": 1.5, "accountant": accountant})
    alg = build_algorithm(params, 10, fed)
    direct = DpFedAvgAccounting(1.5, sampling, 10, 4, 1e-4, accountant)
    w, eps = {"x": torch.zeros(3)}, []
    for r in range(3):
        w = alg.aggregate(w, [ClientUpdate(f"c{i}", {"x": torch.ones(3)}, 1) for i in range(4)])
        eps.append(alg.report()["dp"]["epsilon"])
        assert eps[-1] == direct.epsilon(r + 1)
    assert eps[0] < eps[1] < eps[2]


def test_local_dp_noise_happens_on_the_client_with_the_stated_std():
    alg = build_algorithm(FLParams("fedavg", dp={"mode": "local", "noise_multiplier": 3.0, "clip": 0.2}), 10, FED)
    (spec,) = alg.client_transforms()
    cls = TRANSFORMS.lookup(spec["name"])
    options = {k: v for k, v in spec.items() if k != "name"}
    out = cls.on_client(options, zeros(), ClientContext(seed=3, round=0, client_id="c1"))
    assert pooled(out).std().item() == pytest.approx(3.0 * 0.2, rel=0.02)
    again = cls.on_client(options, zeros(), ClientContext(seed=3, round=0, client_id="c1"))
    other = cls.on_client(options, zeros(), ClientContext(seed=3, round=1, client_id="c1"))
    assert torch.equal(pooled(out), pooled(again)) and not torch.equal(pooled(out), pooled(other))
    for k in range(3):  # the server counts participations; ε is the most-participating client's
        alg.step({"x": torch.zeros(1)}, [ClientUpdate("c1", {"x": torch.zeros(1)}, 1)] +
                 ([ClientUpdate("c2", {"x": torch.zeros(1)}, 1)] if k == 0 else []))
    rep = alg.report()["dp"]
    assert rep["max_participations"] == 3 and rep["epsilon"] == local_dp_epsilon(3.0, 3, 1e-4)


def test_secure_noise_is_not_the_run_seeds():
    p = FLParams("fedavg", dp={"mode": "dp-fedavg", "noise_multiplier": 1.0, "secure_noise": True})
    a, b = build_algorithm(p, 10, FED), build_algorithm(p, 10, FED)
    assert a.dp.noise_seed != b.dp.noise_seed
    seeded = build_algorithm(FLParams("fedavg", dp={"mode": "dp-fedavg", "noise_multiplier": 1.0}), 10, FED)
    assert seeded.dp.noise_seed == build_algorithm(FLParams("fedavg", dp={"mode": "dp-fedavg", "noise_multiplier": 1.0}),
                                                   10, FED).dp.noise_seed


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("dp,key", [
    ({"mode": "dp-fedavg", "epsilon": 1.0, "delta": 1.0}, "fl.dp.delta"),
    ({"mode": "dp-fedavg", "epsilon": 0.0}, "fl.dp.epsilon"),
    ({"mode": "local", "noise_multiplier": 1.0, "clip": -1}, "fl.dp.clip"),
    ({"mode": "dp-fedavg"}, "fl.dp"),
    ({"mode": "fedllm-bench", "epsilon": 1.0, "noise_multiplier": 2.0}, "fl.dp"),
    ({"mode": "laplace", "epsilon": 1.0}, "fl.dp.mode"),
])
def test_bad_privacy_settings_are_config_errors_naming_the_key(dp, key):
    with pytest.raises(ConfigError, match=rf"{key}: "):
        build_config({"fl": {"dp": dp}})


def test_privacy_does_not_combine_with_what_breaks_it():
    with pytest.raises(ConfigError, match="scaffold: its control variates"):
        build_config({"fl": {"algorithm": "scaffold", "dp": {"mode": "dp-fedavg", "epsilon": 1.0}}})
    with pytest.raises(ConfigError, match="robust aggregators"):
        build_config({"fl": {"aggregator": "median", "dp": {"mode": "dp-fedavg", "epsilon": 1.0}}})
    with pytest.raises(ConfigError, match="is set with fl.dp"):
        build_config({"fl": {"transforms": [{"name": "dp-fedavg", "mode": "dp-fedavg", "epsilon": 1.0}]}})


def test_an_epsilon_the_accountant_cannot_certify_is_never_reported():
    """RDP's conversion underflows for huge z and answers ε = 0: that must be an error, not a guarantee."""
    from fedllm.fl.privacy import calibrate_noise_multiplier

    with pytest.raises(ValueError, match="cannot certify an epsilon at noise multiplier z=10000"):
        DpFedAvgAccounting(1e4, "uniform", 23, 2, 1e-4, "rdp").epsilon(8)
    with pytest.raises(ValueError, match=r"unreachable: the smallest epsilon the rdp accountant certifies here is "
                                         r"0\.026.*use accountant 'pld' with fl.sampling: poisson"):
        calibrate_noise_multiplier(0.01, 1e-4, 8, "uniform", 23, 2, "rdp")
    z = calibrate_noise_multiplier(0.01, 1e-4, 8, "poisson", 23, 2, "pld")  # PLD certifies it
    assert 0.0099 <= DpFedAvgAccounting(z, "poisson", 23, 2, 1e-4, "pld").epsilon(8) <= 0.01
    with pytest.raises(ValueError, match="cannot certify"):
        build_algorithm(FLParams("fedavg", dp={"mode": "dp-fedavg", "noise_multiplier": 1e4}), 23,
                        Federation(num_clients=23, clients_per_round=2, rounds=8))


def test_an_unreachable_target_or_a_wrong_accountant_stops_the_run_before_it_writes(tmp_path):
    cfg = tiny_config(tmp_path, fl={"dp": {"mode": "dp-fedavg", "epsilon": 1e-9}})
    with pytest.raises(RunError, match=r"fl.dp.epsilon=1e-09: target_epsilon=1e-09 is unreachable"):
        run(cfg)
    assert not cfg.run_dir.exists()
    cfg = tiny_config(tmp_path, fl={"dp": {"mode": "dp-fedavg", "epsilon": 1.0, "accountant": "pld"}})
    with pytest.raises(RunError, match="accountant 'pld' supports only Poisson sampling"):
        run(cfg)


# ------------------------------------------------------------------ end to end


DP_RUNS = {
    "dp-fedavg": {"dp": {"mode": "dp-fedavg", "epsilon": 8.0}},
    "dp-fedavg-poisson-adaptive": {"sampling": "poisson", "dp": {"mode": "dp-fedavg", "noise_multiplier": 1.0,
                                                                  "accountant": "pld", "adaptive_clip": True,
                                                                  "clipped_count_stddev": 2.0}},
    "fedllm-bench": {"dp": {"mode": "fedllm-bench", "epsilon": 1.0}},
    "local": {"dp": {"mode": "local", "noise_multiplier": 0.3}},
}


@pytest.mark.parametrize("name", sorted(DP_RUNS))
def test_private_run_resumes_bit_identically_with_the_same_epsilon(tmp_path, monkeypatch, name):
    fl = {"rounds": 3, "clients_per_round": 3, **DP_RUNS[name]}
    ref_sim, ref = run(tiny_config(tmp_path / "ref", fl=fl))
    cfg = tiny_config(tmp_path / "k", fl=fl)
    kill_in_round(monkeypatch, cfg, 3)
    sim, summary = run(cfg, resume=True)
    assert all(torch.equal(sim.final_state[k], ref_sim.final_state[k]) for k in ref_sim.final_state)
    assert summary["privacy"] == ref["privacy"]
    rounds = read_metrics(cfg.run_dir / "metrics.jsonl", "round")
    assert [r["dp"] for r in rounds] == [r["dp"] for r in read_metrics(tmp_path / "ref" / "runs" / "t" / "metrics.jsonl", "round")]
    if summary["privacy"]["epsilon"] is not None:
        eps = [r["dp"]["epsilon"] for r in rounds]
        assert eps == sorted(eps) and eps[-1] == summary["privacy"]["epsilon"]
    setup = read_metrics(cfg.run_dir / "metrics.jsonl", "setup")[0]
    assert setup["ffa_lora"] is True and setup["algorithm"]["dp"]["mode"] == summary["privacy"]["mode"]


def test_dp_fedavg_target_epsilon_lands_on_the_target(tmp_path):
    _, summary = run(tiny_config(tmp_path, fl={"rounds": 3, "dp": {"mode": "dp-fedavg", "epsilon": 4.0}}))
    assert summary["privacy"]["rounds_accounted"] == 3
    assert 0.99 * 4.0 <= summary["privacy"]["epsilon"] <= 4.0


def test_ffa_lora_sends_half_and_keeps_a_at_its_seeded_init(tmp_path):
    plain_cfg = tiny_config(tmp_path / "plain", fl={"rounds": 2})
    ffa_cfg = tiny_config(tmp_path / "ffa", fl={"rounds": 2}, lora={"freeze_a": True})
    plain, _ = run(plain_cfg)
    ffa, _ = run(ffa_cfg)
    assert set(ffa.final_state) == {k for k in plain.final_state if "lora_B" in k}  # only B travels
    up = lambda c: sum(e["bytes_up"] for e in read_metrics(c.run_dir / "metrics.jsonl", "client"))  # noqa: E731
    assert up(ffa_cfg) < 0.55 * up(plain_cfg)
    saved = load_adapter_state(ffa_cfg.run_dir / "adapter")  # a whole peft adapter: A (the seeded init) and B
    init = ffa.slot.full(ffa.slot.initial_state(derive_seed(0, "lora-init")))  # the run's own derivation
    assert all(torch.equal(saved[k], init[k]) for k in saved if "lora_A" in k)
    assert any(not torch.equal(saved[k], init[k]) for k in saved if "lora_B" in k)

    for d in (ffa_cfg.run_dir / "checkpoints").iterdir():
        assert set(load_file(str(d / "adapter.safetensors"))) == set(saved)  # checkpoints hold the whole adapter


def test_json_strict_in_private_runs(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 1, "dp": {"mode": "fedllm-bench", "sigma": 1e-3}})
    run(cfg)
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["privacy"]["sigma"] == 1e-3 and summary["privacy"]["epsilon"] is None


def test_dp_sweep_command_writes_its_table_and_plot(tmp_path, bench_file):
    from typer.testing import CliRunner

    from fedllm.cli import app

    args = ["dp-sweep", "--out", str(tmp_path / "sweep"), "--epsilons", "0.5", "model.name=tiny",
            f"data.dataset={bench_file}", "data.max_length=64", "lora.r=4", "fl.rounds=2", "train.local_steps=2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["label"] for r in rows] == ["Local", "FedAvg", "FedAvg, FFA-LoRA", "fedllm-bench ε=0.5", "dp-fedavg ε=0.5"]
    dp = rows[-1]
    assert dp["guaranteed"] and 0.99 * 0.5 <= dp["epsilon"] <= 0.5 and rows[-2]["epsilon"] is None
    assert all(r["heldout_loss"] is not None for r in rows)
    assert (tmp_path / "sweep" / "dp_sweep.png").stat().st_size > 10_000
    assert (tmp_path / "sweep" / "results.csv").read_text().count("\n") == 6
    res = CliRunner().invoke(app, args)  # finished cells are reused, not retrained
    assert res.exit_code == 0 and res.output.count("finished before, reused") == 5
    bad = CliRunner().invoke(app, ["dp-sweep", "--epsilons", "0,x"])
    assert bad.exit_code == 2 and "--epsilons" in bad.output
