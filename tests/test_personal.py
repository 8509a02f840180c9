"""Personalisation: Ditto's and pFedMe's update rules against hand-computed numbers on plain tensors,
FedSA-LoRA's sharing (A aggregated, B never sent), FedAvg+FT, and per-client evaluation in runs."""

from __future__ import annotations

import pytest
import torch

from fedllm.engine.metrics import read_metrics
from fedllm.engine.personal import FINETUNED
from fedllm.engine.transport import InProcessTransport
from fedllm.fairness import compare, spread
from fedllm.fl import FLParams, build_algorithm
from fedllm.fl import state as S
from fedllm.fl.base import ClientUpdate
from fedllm.fl.methods.ditto import DittoHooks
from fedllm.fl.methods.pfedme import PFedMeHooks
from fedllm.models.adapters import load_adapter_state
from tests.conftest import kill_in_round, run_sim, tiny_config


def sgd_steps(start: float, target: float, hooks, steps: int, lr: float) -> list[float]:
    """Minimise ½(x − target)² plus the hooks' term with plain SGD, as the local trainer would (loss,
    hooks' loss term, before_step, step, after_step); the value after each step."""
    x = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))
    params = {"x": x}
    opt = torch.optim.SGD([x], lr=lr)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * (x - target).square().sum()
        extra = hooks.loss_term(params)
        (loss + extra if extra is not None else loss).backward()
        hooks.before_step(params, lr)
        opt.step()
        with torch.no_grad():
            hooks.after_step(params, lr)
        out.append(float(x.detach()))
    return out


def t(v: float) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor([v], dtype=torch.float64)}


def test_ditto_personal_step_by_hand() -> None:
    # v ← v − η(∇f(v) + λ(v − w)): v0 = 1, f = ½(v − 3)², w = 0, λ = 0.5, η = 0.1
    # step 1: g = (1 − 3) + 0.5·1 = −1.5 -> v = 1.15; step 2: g = −1.85 + 0.575 = −1.275 -> v = 1.2775
    hooks = DittoHooks(t(0.0), t(1.0), lam=0.5, steps=2)
    assert hooks.loss_term({"x": torch.nn.Parameter(torch.ones(1))}) is None  # the global training is FedAvg's
    phase = hooks.personal_phase()
    assert float(phase.start["x"]) == 1.0 and phase.steps == 2
    vs = sgd_steps(float(phase.start["x"]), 3.0, phase.hooks, 2, 0.1)
    assert vs == pytest.approx([1.15, 1.2775], abs=1e-12)
    hooks.personal_done(t(vs[-1]))
    global_local = t(0.4)
    extras, kept = hooks.finish(global_local, 2, 0.1)
    assert extras == {} and float(kept["x"]) == pytest.approx(1.2775)
    assert hooks.result(global_local) is global_local  # the update is the global training's
    # first participation: the personal adapter starts at the global one
    assert float(DittoHooks(t(0.25), None, lam=0.5, steps=None).personal_phase().start["x"]) == 0.25


def test_pfedme_update_by_hand() -> None:
    # θ trained on ½(θ − 2)² + λ/2(θ − w_i)², λ = 1, SGD 0.1; every K = 2 steps w_i ← w_i − ηλ(w_i − θ), η = 0.5
    # s1: g = −2 -> θ = 0.2; s2: g = −1.8 + 0.2 = −1.6 -> θ = 0.36; w_i = 0 − 0.5(0 − 0.36) = 0.18
    # s3: g = −1.64 + 0.18 = −1.46 -> θ = 0.506; s4: g = −1.494 + 0.326 = −1.168 -> θ = 0.6228
    #     w_i = 0.18 − 0.5(0.18 − 0.6228) = 0.4014
    hooks = PFedMeHooks(t(0.0), lam=1.0, inner_steps=2, eta=0.5)
    thetas = sgd_steps(0.0, 2.0, hooks, 4, 0.1)
    assert thetas == pytest.approx([0.2, 0.36, 0.506, 0.6228], abs=1e-12)
    extras, kept = hooks.finish(t(thetas[-1]), 4, 0.1)
    assert float(kept["x"]) == pytest.approx(0.6228)  # the personalised θ stays on the client
    assert float(hooks.result(t(thetas[-1]))["x"]) == pytest.approx(0.4014, abs=1e-7)  # w_i is what is sent
    # an incomplete inner solve still moves w_i once at the end: after 3 steps w_i = 0.18 − 0.5(0.18 − 0.506) = 0.343
    h3 = PFedMeHooks(t(0.0), lam=1.0, inner_steps=2, eta=0.5)
    th3 = sgd_steps(0.0, 2.0, h3, 3, 0.1)
    h3.finish(t(th3[-1]), 3, 0.1)
    assert float(h3.result(t(th3[-1]))["x"]) == pytest.approx(0.343, abs=1e-7)


def test_pfedme_server_step_is_beta_times_the_mean() -> None:
    # w ← (1 − β)w + β·Σ p_i w_i = w + β·Σ p_i (w_i − w); β = 2, w = 1, w_i − w = 0.1 (n=1) and 0.4 (n=3)
    alg = build_algorithm(FLParams("pfedme", server_lr=2.0), 2)
    w = {"x": torch.tensor([1.0])}
    ups = [ClientUpdate("a", {"x": torch.tensor([0.1])}, 1), ClientUpdate("b", {"x": torch.tensor([0.4])}, 3)]
    assert float(alg.aggregate(w, ups)["x"]) == pytest.approx(1 + 2 * (0.25 * 0.1 + 0.75 * 0.4))


def test_fedsa_server_steps_the_a_matrices_only() -> None:
    alg = build_algorithm(FLParams("fedsa"), 2)
    w = {"m.lora_A.weight": torch.zeros(2), "m.lora_B.weight": torch.full((2,), 7.0)}
    ups = [ClientUpdate("a", {"m.lora_A.weight": torch.tensor([1.0, 2.0])}, 1),
           ClientUpdate("b", {"m.lora_A.weight": torch.tensor([3.0, 6.0])}, 1)]
    out = alg.aggregate(w, ups)
    assert out["m.lora_A.weight"].tolist() == [2.0, 4.0] and out["m.lora_B.weight"].tolist() == [7.0, 7.0]
    with pytest.raises(ValueError, match="keys differ"):  # a client that sends its B is dropped
        alg.aggregate(w, [ClientUpdate("a", {**ups[0].delta, "m.lora_B.weight": torch.ones(2)}, 1)])


def test_spread_and_compare() -> None:
    s = spread([1.0, 2.0, 3.0, 10.0])
    assert s["mean"] == 4.0 and s["worst"] == 10.0 and s["best"] == 1.0 and s["worst_decile"] == 10.0
    assert spread([float(i) for i in range(20)])["worst_decile"] == 18.5  # the mean of the worst two of twenty
    assert compare({"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 2.5, "c": 9.0}) == {"clients": 2, "better": 1, "mean_gain": 0.25}


def capture_replies(monkeypatch: pytest.MonkeyPatch) -> list:
    seen = []
    original = InProcessTransport.run

    def spy(self, instructions):
        for ex in original(self, instructions):
            seen.append(ex)
            yield ex

    monkeypatch.setattr(InProcessTransport, "run", spy)
    return seen


def test_fedsa_shares_a_and_keeps_b_on_each_client(tmp_path, monkeypatch) -> None:
    seen = capture_replies(monkeypatch)
    cfg = tiny_config(tmp_path, fl={"algorithm": "fedsa", "rounds": 3}, train={"local_steps": 3, "lr": 3e-2})
    sim, summary = run_sim(cfg)
    final = sim.final_state
    a_keys = [k for k in final if ".lora_A." in k]
    b_keys = [k for k in final if ".lora_B." in k]
    assert a_keys and b_keys
    for ex in seen:  # B never leaves a client
        assert set(ex.reply.update.delta) == set(a_keys)
    assert all(ex.bytes_up < summary["adapter_bytes"] * 0.75 for ex in seen)
    assert all(not final[k].any() for k in b_keys)  # the global B is the initial one (zeros)
    personal = {c: sim.algorithm.method.personal_adapter(final, sim.store.get(c)) for c in sim.participants}
    trained = {c: p for c, p in personal.items() if p is not None}
    assert len(trained) >= 3
    for p in trained.values():  # A identical across clients after aggregation: the global A
        assert all(torch.equal(p[k], final[k]) for k in a_keys)
    bs = [torch.cat([p[k].flatten() for k in b_keys]) for p in trained.values()]
    assert all(b.abs().sum() > 0 for b in bs)
    assert all(not torch.equal(bs[i], bs[j]) for i in range(len(bs)) for j in range(i + 1, len(bs)))
    ev = next(e for e in read_metrics(cfg.run_dir / "metrics.jsonl") if e["event"] == "personal")
    assert {r["adapter"] for r in ev["per_client"].values()} <= {"personal", "global"}
    assert ev["personal"]["mean"] < ev["global"]["mean"]  # a trained B beats the base model's zero B


def test_ditto_global_adapter_is_fedavgs_and_personal_state_is_evaluated(tmp_path) -> None:
    common = {"train": {"local_steps": 3, "lr": 3e-2}}
    fedavg, _ = run_sim(tiny_config(tmp_path / "a", fl={"rounds": 2}, **common))
    ditto, summary = run_sim(tiny_config(tmp_path / "d", fl={"rounds": 2, "algorithm": "ditto", "ditto_lambda": 0.5},
                                         **common))
    assert all(torch.equal(fedavg.final_state[k], ditto.final_state[k]) for k in fedavg.final_state)
    events = read_metrics(ditto.cfg.run_dir / "metrics.jsonl")
    clients = [e for e in events if e["event"] == "client"]
    assert all(c["personal_steps"] == 3 and c["personal_loss"] > 0 for c in clients)
    ev = next(e for e in events if e["event"] == "personal")
    trained = {c["client"] for c in clients}
    assert {c for c, r in ev["per_client"].items() if r["adapter"] == "personal"} == trained
    # the reported number is the stored personal adapter's
    c = sorted(trained)[0]
    v = ditto.store.get(c)
    ditto.slot.load(S.match(v, ditto.final_state))
    again = ditto.evaluator.client(ditto.slot.model, c)
    assert again["loss"] == pytest.approx(ev["per_client"][c]["personal"], rel=1e-6)
    assert summary["personal"]["clients"] == len(ev["per_client"])


def test_fedavg_ft_finetunes_each_client_into_the_store(tmp_path) -> None:
    cfg = tiny_config(tmp_path, fl={"rounds": 2}, train={"local_steps": 3, "lr": 3e-2}, personal={"finetune_steps": 2})
    sim, _ = run_sim(cfg)
    ev = next(e for e in read_metrics(cfg.run_dir / "metrics.jsonl") if e["event"] == "personal")
    assert set(ev["per_client"]) == set(sim.participants)
    for c, row in ev["per_client"].items():
        tuned = sim.store.get(c, FINETUNED)
        assert row["adapter"] == "global+ft" and not all(torch.equal(tuned[k], sim.final_state[k]) for k in tuned)
        sim.slot.load(tuned)
        assert sim.evaluator.client(sim.slot.model, c)["loss"] == pytest.approx(row["personal"], rel=1e-6)
    # the global adapter saved is untouched by the fine-tuning
    saved = load_adapter_state(cfg.run_dir / "adapter")
    assert all(torch.equal(saved[k], sim.final_state[k]) for k in sim.final_state)


@pytest.mark.parametrize("algorithm", ["ditto", "pfedme", "fedsa"])
def test_personalised_runs_resume_bit_identically(tmp_path, monkeypatch, algorithm) -> None:
    common = {"fl": {"algorithm": algorithm, "rounds": 3}, "train": {"local_steps": 2, "lr": 3e-2}}
    whole, _ = run_sim(tiny_config(tmp_path / "whole", **common))
    cfg = tiny_config(tmp_path / "cut", **common)
    kill_in_round(monkeypatch, cfg, 3)
    resumed, _ = run_sim(cfg, resume=True)
    assert all(torch.equal(whole.final_state[k], resumed.final_state[k]) for k in whole.final_state)
    for c in whole.participants:
        a, b = whole.store.get(c), resumed.store.get(c)
        assert (a is None) == (b is None)
        assert a is None or all(torch.equal(a[k], b[k]) for k in a)


def test_fedsa_with_frozen_a_is_refused(tmp_path) -> None:
    from fedllm.runs import RunError

    with pytest.raises(RunError, match="shares LoRA's A matrices, which FFA-LoRA freezes"):
        run_sim(tiny_config(tmp_path, fl={"algorithm": "fedsa", "rounds": 1}, lora={"freeze_a": True}))


def test_which_personalised_methods_secure_aggregation_can_serve() -> None:
    assert build_algorithm(FLParams("ditto"), 3).secure_sum_problem() is None  # FedAvg's server; v_i stays home
    assert build_algorithm(FLParams("pfedme"), 3).secure_sum_problem() is None
    assert "sends part of the adapter" in build_algorithm(FLParams("fedsa"), 3).secure_sum_problem()
    assert "besides its update" in build_algorithm(FLParams("scaffold"), 3).secure_sum_problem()
