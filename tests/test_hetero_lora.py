"""Heterogeneous LoRA ranks across clients: zero-padding (HeteroLoRA) and FLoRA's exact stacking,
as plain-tensor math and as tiny runs (training, merging, exact resume, the saved adapter)."""

from __future__ import annotations

import pytest
import torch

from fedllm.config import ConfigError
from fedllm.engine.hetero_lora import server_model
from fedllm.engine.metrics import read_metrics
from fedllm.engine.simulation import Session
from fedllm.fl import ClientUpdate, FLParams, build_algorithm, build_client_hooks
from fedllm.fl import hetero_lora as H
from fedllm.models.adapters import load_adapter_state
from fedllm.models.merged_lora import merged_factors
from tests.conftest import kill_in_round, run_sim, tiny_config

A, B = "m.lora_A.weight", "m.lora_B.weight"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One tiny model for every run here: pad and FLoRA runs share a session, as a bench does."""
    return Session.create(tiny_config(tmp_path_factory.mktemp("session")))


def test_stacked_product_is_the_weighted_sum_of_client_products():
    g = torch.Generator().manual_seed(0)
    ranks, out, inp = [2, 3, 5], 7, 6
    As = [torch.randn(r, inp, generator=g, dtype=torch.float64) for r in ranks]
    Bs = [torch.randn(out, r, generator=g, dtype=torch.float64) for r in ranks]
    p = torch.rand(3, generator=g, dtype=torch.float64)
    p = (p / p.sum()).tolist()
    scales = [8 / r for r in ranks]  # α/r_i: each client's own LoRA scaling
    coefs = [pi * si for pi, si in zip(p, scales)]
    a, b = H.stack(As, Bs, coefs)
    assert a.shape == (sum(ranks), inp) and b.shape == (out, sum(ranks))  # the stacked rank is Σ r_i
    want = sum(c * (bi @ ai) for c, ai, bi in zip(coefs, As, Bs))
    assert torch.allclose(b @ a, want, rtol=1e-12, atol=1e-12)
    # zero-padding the same clients to rank 5 and averaging A and B separately is not the mean of the products
    pa = sum(pi * torch.cat([ai, torch.zeros(5 - ai.shape[0], inp, dtype=torch.float64)]) for pi, ai in zip(p, As))
    pb = sum(torch.cat([bi, torch.zeros(out, 5 - bi.shape[1], dtype=torch.float64)], 1) for bi in Bs)
    assert not torch.allclose(pb @ pa, sum(pi * bi @ ai for pi, ai, bi in zip(p, As, Bs)))


def test_merged_delta_stays_factored_until_dense_is_smaller_and_saves_as_exact_factors():
    g = torch.Generator().manual_seed(1)
    rounds = [(torch.randn(1, 4, generator=g), torch.randn(3, 1, generator=g)) for _ in range(3)]
    merged: dict = {}
    merged = H.add_product(merged, "m", *rounds[0])
    assert set(merged) == {"m.delta_A", "m.delta_B"}  # rank 1: 1·(3 + 4) < 3·4
    merged = H.add_product(merged, "m", *rounds[1])
    assert set(merged) == {"m.delta_W"}  # rank 2: 2·7 ≥ 12, dense from here on
    merged = H.add_product(merged, "m", *rounds[2])
    want = sum(b @ a for a, b in rounds)
    assert torch.allclose(H.materialize(merged)["m"], want, atol=1e-6)
    (b, a), r = merged_factors(merged)[0]["m"], merged_factors(merged)[1]
    assert r == 3 and torch.equal(b @ a, merged["m.delta_W"])  # I·ΔW: exact factors of a dense ΔW


def test_zero_padding_client_update_and_aggregate_by_hand():
    g = torch.Generator().manual_seed(2)
    w = {A: torch.randn(4, 3, generator=g), B: torch.randn(5, 4, generator=g)}
    plan = H.RankPlan("pad", rank=4, alpha=8, ranks={"c0": 2, "c1": 4})
    alg = build_algorithm(FLParams(algorithm="fedavg"), 2, ranks=plan)
    spec = alg.client_method("c0")
    assert spec[H.RANK_KEY] == {"rank": 2, "scale": None}
    hooks = build_client_hooks(spec, w, {}, None)
    start = hooks.start(w)
    assert torch.equal(start[A][:2], w[A][:2]) and not start[A][2:].any() and not start[B][:, 2:].any()
    local = {A: start[A] + 0.5, B: start[B] - 0.25}  # a step that ignored the mask
    hooks.after_step(local, 0.1)  # ... is put back to zero beyond r_i
    delta = {k: v - w[k] for k, v in hooks.result(local).items()}
    assert not delta[A][2:].any() and not delta[B][:, 2:].any()  # exactly zero beyond rank 2
    sent = hooks.outgoing(delta)
    assert sent[A].shape == (2, 3) and sent[B].shape == (5, 2)  # only the r_i components leave the client
    d1 = {A: torch.randn(4, 3, generator=g), B: torch.randn(5, 4, generator=g)}
    ups = [ClientUpdate("c0", sent, num_samples=1), ClientUpdate("c1", d1, num_samples=3)]
    new = alg.aggregate(w, ups)
    padded = {A: torch.zeros(4, 3), B: torch.zeros(5, 4)}
    padded[A][:2], padded[B][:, :2] = sent[A], sent[B]
    for k in (A, B):  # w + ¼·pad(Δ_0) + ¾·Δ_1, by hand
        assert torch.allclose(new[k], w[k] + 0.25 * padded[k] + 0.75 * d1[k], atol=1e-6)
    assert torch.allclose(new[A][2:], w[A][2:] + 0.75 * d1[A][2:], atol=1e-6)  # rank 2..3: the rank-4 client's alone


def test_flora_server_step_merges_the_stacked_products():
    g = torch.Generator().manual_seed(3)
    w = {A: torch.randn(4, 3, generator=g), B: torch.zeros(5, 4)}  # a fresh LoRA: B = 0
    plan = H.RankPlan("flora", rank=4, alpha=8, ranks={"c0": 1, "c1": 3})
    alg = build_algorithm(FLParams(algorithm="fedavg"), 2, ranks=plan)
    assert alg.client_method("c1")[H.RANK_KEY] == {"rank": 3, "scale": 8 / 3}
    deltas = [{A: torch.randn(r, 3, generator=g), B: torch.randn(5, r, generator=g)} for r in (1, 3)]
    new = alg.aggregate(w, [ClientUpdate("c0", deltas[0], num_samples=2), ClientUpdate("c1", deltas[1], num_samples=6)])
    assert all(torch.equal(new[k], w[k]) for k in w)  # the adapter starts afresh; the products went into the base
    want = sum(p * 8 / r * d[B] @ (w[A][:r] + d[A]) for p, r, d in zip((0.25, 0.75), (1, 3), deltas))
    assert torch.allclose(H.materialize(alg.merge.merged)["m"], want, atol=1e-5)
    assert alg.client_payload(w)[H.MERGED] is alg.merge.merged  # the next round's clients get the merged ΔW


def test_rank_rules_and_bad_ranks(tmp_path):
    assert H.assign_ranks([2, 4], ["a", "b", "c"], 8) == {"a": 2, "b": 4, "c": 2}  # cyclic in client order
    assert H.assign_ranks({"b": 2}, ["a", "b"], 8) == {"a": 8, "b": 2}  # unnamed clients: lora.r
    with pytest.raises(ValueError, match="lacks"):
        H.assign_ranks({"zz": 2}, ["a"], 8)
    with pytest.raises(ConfigError) as e:
        tiny_config(tmp_path, lora={"hetero": "pad", "client_ranks": [2, 8]})
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and "lora.client_ranks [8]" in lines[1] and "1..lora.r=4" in lines[1]
    with pytest.raises(ConfigError, match="client_ranks needs lora.hetero"):
        tiny_config(tmp_path, lora={"client_ranks": [2]})
    with pytest.raises(ConfigError, match="scaffold"):
        tiny_config(tmp_path, lora={"hetero": "pad"}, fl={"algorithm": "scaffold"})


def test_zero_padding_run_trains_rank_slices_only(tmp_path, monkeypatch, session):
    seen: list[tuple[int, bool, bool]] = []
    original_before, original_out = H.RankHooks.before_step, H.RankHooks.outgoing

    def before_step(self, params, lr):  # the gradients beyond r_i are exactly zero before any masking
        seen.append((self.rank, all(not self._beyond(params[k].grad, k).any() for k in self.axes), True))
        original_before(self, params, lr)

    def outgoing(self, delta):
        seen.append((self.rank, all(not self._beyond(delta[k], k).any() for k in self.axes), False))
        return original_out(self, delta)

    monkeypatch.setattr(H.RankHooks, "before_step", before_step)
    monkeypatch.setattr(H.RankHooks, "outgoing", outgoing)
    cfg = tiny_config(tmp_path, lora={"hetero": "pad", "client_ranks": [2, 4]}, fl={"rounds": 1, "clients_per_round": 4},
                      train={"local_steps": 2})
    run_sim(cfg, session=session)
    assert {r for r, _, _ in seen} == {2, 4} and all(zero for _, zero, _ in seen)
    events = read_metrics(cfg.run_dir / "metrics.jsonl")
    setup = next(e for e in events if e["event"] == "setup")
    ranks = setup["algorithm"]["ranks"]["client_ranks"]
    assert ranks == {"user0": 2, "user1": 4, "user2": 2, "user3": 4}
    up = {ranks[e["client"]]: e["bytes_up"] for e in events if e["event"] == "client"}
    assert up[2] < up[4] - 1000  # a rank-2 client sends half the LoRA components
    evals = [e["pooled_loss"] for e in events if e["event"] == "eval"]
    assert evals[-1] < evals[0]
    saved = load_adapter_state(cfg.run_dir / "adapter")  # the global adapter: plain peft LoRA of rank lora.r
    assert saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape[0] == 4


def _flora(tmp_path):
    return tiny_config(tmp_path, lora={"hetero": "flora", "client_ranks": [2, 4]}, fl={"rounds": 2},
                       train={"local_steps": 2})


def test_flora_trains_merges_each_round_and_resumes_bit_identically(tmp_path, monkeypatch, session):
    from peft import PeftModel

    from fedllm.models.loading import load_base_model

    ref_cfg = _flora(tmp_path / "ref")
    modules = sorted(H.lora_modules(session.slot.read()))
    w0 = {m: session.slot.model.get_submodule(m).get_base_layer().weight.clone() for m in modules}
    ref, _ = run_sim(ref_cfg, session=session)
    events = read_metrics(ref_cfg.run_dir / "metrics.jsonl")
    evals = [e["pooled_loss"] for e in events if e["event"] == "eval"]
    assert len(evals) == 3 and evals[2] < evals[1] < evals[0]  # held-out loss falls round after round
    flora = [e["flora"] for e in events if e["event"] == "round"]
    assert flora[0]["merged_rank"] == flora[0]["stacked_rank"] > 0  # merged after round 1 ...
    assert flora[1]["merged_rank"] == flora[0]["stacked_rank"] + flora[1]["stacked_rank"]  # ... and again after 2
    downs = [e["bytes_down"] for e in events if e["event"] == "client"]
    assert downs[2] > downs[0]  # round 2's instructions carry the merged factors
    assert all(torch.equal(session.slot.model.get_submodule(m).get_base_layer().weight, w0[m]) for m in modules)

    cfg = _flora(tmp_path / "killed")
    kill_in_round(monkeypatch, cfg, 2, session=session)  # dies as round 2 starts: resumes from round 1's checkpoint
    resumed, _ = run_sim(cfg, resume=True, session=session)
    merged, merged_ref = resumed.algorithm.merge.merged, ref.algorithm.merge.merged
    assert merged.keys() == merged_ref.keys() and all(torch.equal(merged[k], merged_ref[k]) for k in merged_ref)
    story = [(e["event"], e.get("round"), e.get("client"), e.get("loss"), e.get("pooled_loss"))
             for e in read_metrics(cfg.run_dir / "metrics.jsonl")]
    assert story == [(e["event"], e.get("round"), e.get("client"), e.get("loss"), e.get("pooled_loss")) for e in events]
    saved = load_adapter_state(cfg.run_dir / "adapter")
    assert all(torch.equal(v, load_adapter_state(ref_cfg.run_dir / "adapter")[k]) for k, v in saved.items())

    # the saved adapter is a plain peft LoRA (scaling 1) whose products are the merged ΔW ...
    delta = H.materialize(merged_ref)
    for m in modules:
        assert torch.allclose(saved[f"{m}.lora_B.weight"] @ saved[f"{m}.lora_A.weight"], delta[m], atol=1e-6)
    # ... and loaded on the base it is the model the server evaluated
    loaded = PeftModel.from_pretrained(load_base_model(ref_cfg.model).model, str(ref_cfg.run_dir / "adapter")).eval()
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    model = ref.slot.model.eval()
    with torch.no_grad(), server_model(model, ref.algorithm):
        want = model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, want, atol=1e-4)
