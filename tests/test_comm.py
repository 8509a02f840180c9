"""Compressed messages: the codec in both directions through the real bytes, error feedback kept in
the client's store, resume bit for bit, and bytes measured from the encoded messages."""

from __future__ import annotations

import pytest
import torch

from fedllm.engine.messages import ZSTD_MAGIC, Instruction, Reply
from fedllm.engine.metrics import read_metrics
from fedllm.engine.progress import Reporter
from fedllm.engine.simulation import Simulation
from fedllm.fl import ClientUpdate
from fedllm.fl.codec import WireSpec, error_bound
from tests.conftest import kill_in_round, synthetic_federation, tiny_config
from tests.conftest import run_sim as run


def test_a_reply_travels_as_int8_and_zstd_and_decodes_within_the_bound():
    gen = torch.Generator().manual_seed(0)
    delta = {"l.lora_A.weight": torch.randn(16, 576, generator=gen) * 1e-3, "l.lora_B.weight": torch.randn(576, 16, generator=gen)}
    reply = Reply(0, ClientUpdate("c", delta, 5, 4, 2, 1e-3), {"loss": 1.0})
    exact = reply.to_bytes()
    wire = WireSpec(quantize="int8", scale="row", dtype="fp16", zstd=3)
    residuals: dict = {}
    blob = reply.to_bytes(wire, residuals)
    assert blob[:4] == ZSTD_MAGIC and len(blob) < 0.35 * len(exact)
    back = Reply.from_bytes(blob).update.delta
    for k, x in delta.items():
        assert back[k].dtype == torch.float32 and bool(((back[k] - x).abs() <= error_bound(x, wire)).all())
        torch.testing.assert_close(residuals["delta"][k], x - back[k])  # what the message lost, kept by the sender
    ins = Instruction(0, "c", 0, 1e-3, {}, {"name": "plain"}, delta, reply_wire=wire.model_dump())
    half = ins.to_bytes(WireSpec(dtype="bf16"))
    assert Instruction.from_bytes(half).reply_wire == wire.model_dump()
    payload = lambda blob: len(blob) - 8 - int.from_bytes(blob[:8], "little")  # noqa: E731  (safetensors: header, data)
    assert payload(half) * 2 == payload(ins.to_bytes()) == 4 * sum(x.numel() for x in delta.values())


COMM = {"up": {"quantize": "int8", "scale": "tensor", "zstd": 3}, "down": {"dtype": "fp16"}}


def test_compressed_run_sends_fewer_bytes_and_learns(tmp_path):
    exact_cfg = tiny_config(tmp_path / "exact", fl={"rounds": 3})
    small_cfg = tiny_config(tmp_path / "small", fl={"rounds": 3}, comm=COMM)
    run(exact_cfg)
    sim, summary = run(small_cfg)
    ex = read_metrics(exact_cfg.run_dir / "metrics.jsonl", "client")
    sm = read_metrics(small_cfg.run_dir / "metrics.jsonl", "client")
    assert sum(e["bytes_up"] for e in sm) < 0.35 * sum(e["bytes_up"] for e in ex)
    # fp16 downlink: each instruction carries half the adapter's fp32 bytes, plus the codec's layout
    # (about 125 bytes per tensor: much of the tiny adapter's 14 kB, a rounding error on a real one)
    saved = sum(e["bytes_down"] for e in ex) - sum(e["bytes_down"] for e in sm)
    assert 0.6 * len(sm) * summary["adapter_bytes"] / 2 < saved < len(sm) * summary["adapter_bytes"] / 2
    evals = read_metrics(small_cfg.run_dir / "metrics.jsonl", "eval")
    assert evals[-1]["pooled_loss"] < evals[0]["pooled_loss"]
    # error feedback: every client that sent keeps its residual in its own store, checkpointed
    assert sim.store is not None and all(sim.store.get(e["client"], "codec") is not None for e in sm)
    assert summary["cost"]["bytes_up"] == sum(e["bytes_up"] for e in sm)


def test_compressed_run_resumes_bit_identically(tmp_path, monkeypatch):
    fl = {"rounds": 4}
    ref, _ = run(tiny_config(tmp_path / "ref", fl=fl, comm=COMM))
    cfg = tiny_config(tmp_path / "k", fl=fl, comm=COMM)
    kill_in_round(monkeypatch, cfg, 3)
    got, _ = run(cfg, resume=True)
    assert all(torch.equal(got.final_state[k], ref.final_state[k]) for k in ref.final_state)


def test_a_non_finite_update_still_reaches_the_server_to_be_dropped(tmp_path):
    from fedllm.engine.client import serve_round
    from fedllm.engine.store import ClientStateStore

    sim = Simulation(tiny_config(tmp_path, fl={"rounds": 1}, comm=COMM), dataset=synthetic_federation(),
                     reporter=Reporter(quiet=True))
    sim._open_run_dir()
    sim._setup()
    rt = sim.runtime
    rt.store = ClientStateStore(tmp_path / "store")
    w = rt.slot.initial_state(0)
    ins = Instruction(0, "user0", 0, float("inf"), dict(sim._train_settings()), {"name": "plain"}, w,
                      reply_wire=sim.cfg.comm.up.model_dump())
    reply = Reply.from_bytes(serve_round(ins.to_bytes(), sim.fleet.dataset["user0"], rt))
    assert reply.metrics["codec_fallback"] == "non-finite update sent exactly"
    assert not all(torch.isfinite(v).all() for v in reply.update.delta.values())


@pytest.mark.parametrize("up", [{"dtype": "bf16"}, {"topk": 0.25, "dtype": "fp16"},
                                {"quantize": "int8", "scale": "row", "topk": 0.5, "zstd": 19}])
def test_every_codec_runs_end_to_end(tmp_path, up):
    exact_cfg = tiny_config(tmp_path / "exact", fl={"rounds": 2})
    cfg = tiny_config(tmp_path / "c", fl={"rounds": 2}, comm={"up": up})
    run(exact_cfg)
    sim, summary = run(cfg)
    assert summary["cost"]["bytes_up"] < 0.8 * json_bytes_up(exact_cfg)
    assert all(torch.isfinite(v).all() for v in sim.final_state.values())
    assert summary["final_eval"]["pooled_loss"] is not None


def json_bytes_up(cfg) -> int:
    return sum(e["bytes_up"] for e in read_metrics(cfg.run_dir / "metrics.jsonl", "client"))
