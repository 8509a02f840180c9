"""End-to-end engine behaviour on a tiny random model: training, outputs, Local, exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedllm.engine import simulation as sim_mod
from fedllm.engine.metrics import read_metrics
from fedllm.engine.progress import Reporter
from fedllm.engine.simulation import RunError, Session, Simulation, cosine_lr
from fedllm.eval.heldout import HeldoutEvaluator
from fedllm.models.adapters import load_adapter_state
from fedllm.train.local import LocalTrainer
from tests.conftest import synthetic_federation, tiny_config


def run(cfg, resume=False, dataset=None, **kw):
    sim = Simulation(cfg, dataset=dataset or synthetic_federation(), reporter=Reporter(quiet=True),
                     evaluator=HeldoutEvaluator.from_config(cfg.eval), **kw)
    summary = sim.run(resume=resume)
    return sim, summary


def test_cosine_lr_schedule():
    assert cosine_lr(0, 10, 1.0, 0.0) == 1.0
    assert cosine_lr(5, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert cosine_lr(3, 1, 0.7, 0.0) == 0.7


def test_fedavg_run_writes_outputs_and_learns(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 4}, train={"local_steps": 6, "lr": 3e-2})
    sim, summary = run(cfg)
    d = cfg.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (d / name).is_file(), name
    events = read_metrics(d / "metrics.jsonl")
    kinds = {e["event"] for e in events}
    assert {"setup", "step", "client", "round", "eval", "checkpoint"} <= kinds
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["round"] for e in evals] == [0, 1, 2, 3, 4]
    assert evals[-1]["pooled_loss"] < evals[0]["pooled_loss"] - 0.5  # held-out loss falls
    rounds = [e for e in events if e["event"] == "round"]
    assert len(rounds) == 4 and all(len(r["clients"]) == 2 for r in rounds)
    clients = [e for e in events if e["event"] == "client"]
    # bytes are the lengths of the real messages: the adapter (down) or the update (up), plus headers
    adapter = summary["adapter_bytes"]
    assert all(c["steps"] == 6 for c in clients)
    assert all(adapter < c["bytes_down"] < adapter + 20_000 and adapter < c["bytes_up"] < adapter + 20_000 for c in clients)
    setup = next(e for e in events if e["event"] == "setup")
    body, lora = setup["body_parameters"], summary["adapter_parameters"]
    head = sim.slot.model.get_base_model().lm_head.weight.numel()
    for c in clients:  # 4 FLOPs per frozen body weight and token, 6 per LoRA weight, head only on labelled tokens
        assert c["flops"] == 4 * body * c["tokens"] + 6 * lora * c["tokens"] + 6 * head * c["labelled_tokens"]
        assert 0 < c["labelled_tokens"] < c["tokens"] and c["peak_rss_mb"] > 0
    cost = summary["cost"]
    assert cost["client_rounds"] == 8 and cost["local_steps"] == 48
    assert cost["train_flops"] == sum(c["flops"] for c in clients)
    assert cost["bytes_up"] == sum(c["bytes_up"] for c in clients) and cost["tokens_per_s"] > 0 and cost["seconds_per_step"] > 0
    assert sum(r["bytes_down"] for r in rounds) == cost["bytes_down"]
    assert summary["final_eval"]["pooled_loss"] == pytest.approx(evals[-1]["pooled_loss"])
    # the saved adapter equals the final global state and loads with peft
    saved = load_adapter_state(d / "adapter")
    assert all(torch.equal(saved[k], sim.final_state[k]) for k in saved)
    from peft import PeftModel

    from fedllm.models.tiny import build_tiny_model

    peft_model = PeftModel.from_pretrained(build_tiny_model(), str(d / "adapter"))
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())


def test_run_refuses_to_overwrite(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 1})
    run(cfg)
    with pytest.raises(RunError, match="already holds a run"):
        run(cfg)


def test_local_baseline_trains_one_client_and_reports_own_loss(tmp_path):
    cfg = tiny_config(tmp_path, fl={"algorithm": "local", "local_client": "user2", "rounds": 2})
    _, summary = run(cfg)
    rounds = read_metrics(cfg.run_dir / "metrics.jsonl", "round")
    assert all(r["clients"] == ["user2"] for r in rounds)
    final = read_metrics(cfg.run_dir / "metrics.jsonl", "eval")[-1]
    assert final["own_loss"] == pytest.approx(final["per_client"]["user2"]["loss"])
    assert set(final["per_client"]) == {"user0", "user1", "user2", "user3"}  # evaluated on everyone's data
    assert summary["participants"] == ["user2"]


def test_centralised_baseline_trains_on_every_clients_data_in_one_client(tmp_path):
    """fl.local_client=pooled is Local on one client holding all training samples: bit for bit the run
    in which a real client of that name holds them, while evaluation still covers the federation."""
    ds = synthetic_federation()
    pooled = ds.with_pooled(ds.client_ids)
    assert pooled.client_ids == ds.client_ids and "pooled" in pooled
    assert pooled["pooled"].train == [s for c in ds.client_ids for s in ds[c].train] and not pooled["pooled"].test
    cfg = tiny_config(tmp_path, name="central", fl={"algorithm": "local", "local_client": "pooled", "rounds": 2})
    _, summary = run(cfg, dataset=ds)
    assert summary["participants"] == ["pooled"]
    assert all(r["clients"] == ["pooled"] for r in read_metrics(cfg.run_dir / "metrics.jsonl", "round"))
    final = read_metrics(cfg.run_dir / "metrics.jsonl", "eval")[-1]
    assert set(final["per_client"]) == {"user0", "user1", "user2", "user3"} and final["own_loss"] is None
    from fedllm.data.schema import ClientData, FederatedDataset

    real = FederatedDataset.from_clients("synthetic", [*(ds[c] for c in ds.client_ids),
                                                       ClientData("pooled", pooled["pooled"].train)])
    ref = tiny_config(tmp_path, name="real", fl={"algorithm": "local", "local_client": "pooled", "rounds": 2})
    with pytest.raises(RunError, match="pooled: no client of .* has a trainable sample"):
        run(tiny_config(tmp_path, name="x", fl={"algorithm": "local", "local_client": "pooled", "rounds": 1}),
            dataset=FederatedDataset.from_clients("s", [ClientData("a", [])]))
    run(ref, dataset=real)  # a client with the id "pooled" is that client, not the pool
    got, want = load_adapter_state(cfg.run_dir / "adapter"), load_adapter_state(ref.run_dir / "adapter")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_local_client_errors(tmp_path):
    with pytest.raises(RunError, match="not a client id"):
        run(tiny_config(tmp_path, fl={"algorithm": "local", "local_client": "nobody"}))


def test_dynamic_local_steps(tmp_path):
    # n_i = 10..19 train samples, E=1, T=2, S=2, N=4 -> K_i = ceil(n_i / 1 / 2)
    cfg = tiny_config(tmp_path, fl={"rounds": 2}, train={"local_steps": "dynamic", "epochs": 1.0, "batch_size": 2})
    run(cfg)
    ds = synthetic_federation()
    for c in read_metrics(cfg.run_dir / "metrics.jsonl", "client"):
        n = ds[c["client"]].num_train
        assert c["steps"] == math.ceil(n * 1.0 / (2 * 2 / 4) / 2)


def test_same_seed_same_adapter_different_seed_differs(tmp_path):
    a, _ = run(tiny_config(tmp_path / "a", fl={"rounds": 2}))
    b, _ = run(tiny_config(tmp_path / "b", fl={"rounds": 2}))
    c, _ = run(tiny_config(tmp_path / "c", fl={"rounds": 2}, seed=1))
    assert all(torch.equal(a.final_state[k], b.final_state[k]) for k in a.final_state)
    assert not all(torch.equal(a.final_state[k], c.final_state[k]) for k in a.final_state)


class Killed(Exception):
    pass


def _kill_on_call(monkeypatch, target: str, n: int):
    """Make ``simulation.<target>`` raise on its n-th call (1-based), as if the process died there."""
    original = getattr(sim_mod, target)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if target == "save_checkpoint":  # die half-way through writing the checkpoint
                root = args[0]
                (root / f".round-{args[1]}.tmp").mkdir(parents=True, exist_ok=True)
                (root / f".round-{args[1]}.tmp" / "adapter.safetensors").write_bytes(b"partial")
            raise Killed(target)
        return original(*args, **kwargs)

    monkeypatch.setattr(sim_mod, target, wrapper)
    return original


@pytest.mark.parametrize(
    "algorithm,kill_target,kill_call",
    [
        ("scaffold", "LocalTrainer", 6),  # mid-round 3: second client's training (client store in use)
        ("fedadam", "save_checkpoint", 3),  # half-way through writing the 3rd checkpoint
        ("fedavgm", "save_adapter", 1),  # after the last checkpoint, while saving the final adapter
        ("fedprox", "LocalTrainer", 6),
    ],
)
def test_resume_is_bit_identical(tmp_path, monkeypatch, algorithm, kill_target, kill_call):
    fl = {"algorithm": algorithm, "rounds": 4, "clients_per_round": 2}
    ref_cfg = tiny_config(tmp_path / "ref", fl=fl)
    ref, _ = run(ref_cfg)

    cfg = tiny_config(tmp_path / "killed", fl=fl)
    with monkeypatch.context() as m:
        if kill_target == "LocalTrainer":
            original_train = LocalTrainer.train
            calls = {"n": 0}

            def dying_train(self, *a, **k):
                calls["n"] += 1
                if calls["n"] == kill_call:
                    raise Killed("train")
                return original_train(self, *a, **k)

            m.setattr(LocalTrainer, "train", dying_train)
        else:
            _kill_on_call(m, kill_target, kill_call)
        with pytest.raises(Killed):
            run(cfg)
    resumed, _ = run(cfg, resume=True)
    for k, v in ref.final_state.items():
        assert torch.equal(resumed.final_state[k], v), k
    saved_ref = load_adapter_state(ref_cfg.run_dir / "adapter")
    saved = load_adapter_state(cfg.run_dir / "adapter")
    assert all(torch.equal(saved[k], saved_ref[k]) for k in saved_ref)
    # the resumed metrics tell the same story as the uninterrupted ones (timings aside)
    def story(path):
        return [(e["event"], e.get("round"), e.get("client"), e.get("loss"), e.get("pooled_loss"))
                for e in read_metrics(path / "metrics.jsonl")]
    assert story(cfg.run_dir) == story(ref_cfg.run_dir)
    assert not [p.name for p in (cfg.run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]  # no debris


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 1})
    _, summary = run(cfg, resume=True)
    assert summary["rounds"] == 1


def test_shared_session_runs_do_not_leak(tmp_path):
    """Two runs on one loaded model start from the same initial adapter as separate processes do."""
    cfg_a = tiny_config(tmp_path / "a", fl={"rounds": 1})
    session = Session.create(cfg_a)
    ds = synthetic_federation()
    Simulation(tiny_config(tmp_path / "x", fl={"rounds": 2}), session=session, dataset=ds, reporter=Reporter(quiet=True)).run()
    shared = Simulation(cfg_a, session=session, dataset=ds, reporter=Reporter(quiet=True),
                        evaluator=HeldoutEvaluator.from_config(cfg_a.eval))
    shared.run()
    alone, _ = run(tiny_config(tmp_path / "b", fl={"rounds": 1}))
    assert all(torch.equal(shared.final_state[k], alone.final_state[k]) for k in alone.final_state)
    summary = json.loads((cfg_a.run_dir / "summary.json").read_text())
    assert summary["rounds"] == 1


def test_client_store_snapshot_is_isolated_from_later_writes(tmp_path):
    from fedllm.engine.store import ClientStateStore

    store = ClientStateStore(tmp_path / "live")
    assert store.get("a") is None
    store.put("a", {"x": torch.ones(2)})
    store.snapshot(tmp_path / "snap")
    store.put("a", {"x": torch.zeros(2)})  # atomic replace: the snapshot's hard link keeps the old bytes
    store.put("b/with:odd chars", {"x": torch.full((2,), 3.0)})
    assert torch.equal(store.get("a")["x"], torch.zeros(2)) and len(store) == 2
    store.restore(tmp_path / "snap")
    assert torch.equal(store.get("a")["x"], torch.ones(2)) and store.get("b/with:odd chars") is None


def test_sigkilled_process_resumes_bit_identically(tmp_path, bench_file):
    """A real `kill -9` of `fedllm train` mid-run, then `--resume`: same final adapter as a run never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def args(name):
        return [sys.executable, "-m", "fedllm.cli", "train", "-q", f"output_dir={tmp_path}", f"name={name}",
                "model.name=tiny", f"data.dataset={bench_file}", "data.max_length=64", "lora.r=4",
                "fl.algorithm=scaffold", "fl.rounds=6", "train.local_steps=25", "train.batch_size=2", "eval.every=2"]

    # the uninterrupted run goes side by side with the one to kill, so every process computes with one
    # thread (as `fedllm bench` runs its cells): two with a thread per core each would spin against each other
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ref_log = tmp_path / "ref.log"
    with open(ref_log, "w") as f:
        ref_proc = subprocess.Popen(args("ref"), stdout=f, stderr=subprocess.STDOUT, env=env)
    proc = subprocess.Popen(args("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and '"round": 4, "client"' in metrics.read_text():
            break  # inside round 4: past the checkpoint of round 3, before the next one
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    subprocess.run([sys.executable, "-m", "fedllm.cli", "train", "-q", "--resume", str(tmp_path / "killed")],
                   check=True, capture_output=True, env=env)
    assert ref_proc.wait(timeout=300) == 0, ref_log.read_text()[-2000:]
    ref = load_adapter_state(tmp_path / "ref" / "adapter")
    got = load_adapter_state(tmp_path / "killed" / "adapter")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
