"""The client/server seam: messages round-trip losslessly as bytes, and one client round runs from an
instruction alone (its data, the base model and its own state), as a network transport would call it."""

from __future__ import annotations

import pytest
import torch

from fedllm.config import build_config
from fedllm.engine.client import ClientError, ClientRuntime, run_client_round
from fedllm.engine.messages import Instruction, MessageError, Reply
from fedllm.engine.store import ClientStateStore
from fedllm.fl import ClientUpdate, FLParams, build_algorithm
from fedllm.fl import state as S
from fedllm.models.adapters import AdapterSlot, attach_adapter
from fedllm.models.precision import Precision
from fedllm.models.tiny import build_tiny_model, build_tiny_tokenizer
from fedllm.train.task import Task
from tests.conftest import synthetic_federation

TRAIN = {"local_steps": 3, "batch_size": 2, "grad_accum": 1, "group_by_length": True, "optimizer": "adamw",
         "momentum": 0.9, "weight_decay": 0.0, "max_grad_norm": 1.0}


def odd_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"a.lora_A.weight": torch.randn(3, 4, generator=gen), "b/with:odd chars.Ω": torch.randn(5, generator=gen),
            "half": torch.randn(2, 2, generator=gen).to(torch.bfloat16), "double": torch.randn(2, generator=gen, dtype=torch.float64)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_instruction_round_trips_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    ins = Instruction(round=4, client_id="user/ü 1", seed=123, lr=1 / 3 * 1e-3, train=dict(TRAIN, local_steps="dynamic"),
                      method={"name": "scaffold", "after_step": False}, adapter=odd_state(gen),
                      payload={"c": odd_state(gen)}, transforms=[{"name": "clip", "max_norm": 0.5, "where": "client"}])
    blob = ins.to_bytes()
    back = Instruction.from_bytes(blob)
    assert back.lr == ins.lr and back.round == 4 and back.client_id == ins.client_id and back.seed == 123
    assert back.train == ins.train and back.method == ins.method and back.transforms == ins.transforms
    assert same(back.adapter, ins.adapter) and same(back.payload["c"], ins.payload["c"])
    # the bytes are the tensors plus a small header: what would cross a network
    raw = S.num_bytes(ins.adapter) + S.num_bytes(ins.payload["c"])
    assert raw < len(blob) < raw + 4096


def test_reply_round_trips_and_kinds_are_checked():
    gen = torch.Generator().manual_seed(1)
    update = ClientUpdate("c7", odd_state(gen), num_samples=12, num_seen=6, num_steps=3, lr=2e-4,
                          extras={"control_delta": odd_state(gen)})
    reply = Reply(round=2, update=update, metrics={"loss": 1.25, "step_log": [[1.5, 10, 0.1]]})
    back = Reply.from_bytes(reply.to_bytes())
    u = back.update
    assert (u.client_id, u.num_samples, u.num_seen, u.num_steps, u.lr) == ("c7", 12, 6, 3, 2e-4)
    assert same(u.delta, update.delta) and same(u.extras["control_delta"], update.extras["control_delta"])
    assert back.metrics == reply.metrics and back.round == 2
    with pytest.raises(MessageError, match="expected a fedllm-message/1 instruction"):
        Instruction.from_bytes(reply.to_bytes())
    with pytest.raises(MessageError, match="not a fedllm reply"):
        Reply.from_bytes(b"\x00" * 64)


@pytest.fixture(scope="module")
def runtime():
    tok = build_tiny_tokenizer()
    model = attach_adapter(build_tiny_model(tok), build_config({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    slot = AdapterSlot(model)
    return ClientRuntime(slot, Task.create("sft", "chat", tok, 64), Precision("fp32", torch.device("cpu")))


def instruction_for(alg, w: dict, cid: str, r: int = 0) -> Instruction:
    return Instruction(round=r, client_id=cid, seed=0, lr=5e-3, train=TRAIN, method=alg.client_method(), adapter=w,
                       payload=alg.client_payload(w), transforms=alg.client_transforms())


def test_client_round_runs_from_the_instruction_bytes_alone(runtime, tmp_path):
    """SCAFFOLD: c travels down, Δc_i up; the client keeps c_i in its own store; the reply is deterministic."""
    data = synthetic_federation()["user1"]
    alg = build_algorithm(FLParams("scaffold"), num_clients=4)
    w = runtime.slot.initial_state(seed=5)
    ins = instruction_for(alg, w, "user1")
    blob = ins.to_bytes()
    assert len(blob) > 2 * S.num_bytes(w)  # the adapter and c
    rt = ClientRuntime(runtime.slot, runtime.task, runtime.precision, ClientStateStore(tmp_path / "a"))
    reply = run_client_round(Instruction.from_bytes(blob), data, rt)
    assert reply.update.num_samples == len(data.train) and reply.update.num_steps == 3
    assert set(reply.update.extras) == {"control_delta"} and rt.store.get("user1") is not None
    assert len(reply.to_bytes()) > 2 * S.num_bytes(w)  # Δ_i and Δc_i
    assert [len(s) for s in reply.metrics["step_log"]] == [3, 3, 3]
    # the same instruction to a fresh client store gives the same update, bit for bit
    rt2 = ClientRuntime(runtime.slot, runtime.task, runtime.precision, ClientStateStore(tmp_path / "b"))
    again = run_client_round(Instruction.from_bytes(blob), data, rt2)
    assert same(again.update.delta, reply.update.delta)
    # the server accepts it and moves c by Δc_i / N
    new_w = alg.aggregate(w, [reply.update])
    assert not same(new_w, w)
    c = alg.state_dict()
    assert torch.equal(c["c/" + next(iter(w))], reply.update.extras["control_delta"][next(iter(w))] / 4)


def test_client_stage_transform_runs_on_the_client(runtime):
    data = synthetic_federation()["user0"]
    w = runtime.slot.initial_state(seed=5)
    plain = build_algorithm(FLParams("fedavg"), 4)
    clipped = build_algorithm(FLParams("fedavg", transforms=[{"name": "clip", "max_norm": 1e-3}]), 4)
    assert clipped.client_transforms() == [{"name": "clip", "max_norm": 1e-3, "where": "client"}]
    free = run_client_round(instruction_for(plain, w, "user0"), data, runtime).update.delta
    bound = run_client_round(instruction_for(clipped, w, "user0"), data, runtime).update.delta
    assert S.norm(free) > 1e-3 and S.norm(bound) == pytest.approx(1e-3, rel=1e-5)
    # the same direction: the client scaled its update before it left
    ratio = S.norm(free) / S.norm(bound)
    assert all(torch.allclose(free[k], bound[k] * ratio, rtol=1e-4, atol=1e-9) for k in free)


def test_a_client_without_trainable_samples_says_so(runtime):
    from fedllm.data.schema import ClientData, InstructionSample

    long_prompt = InstructionSample.single_turn("word " * 200, "short answer")
    data = ClientData("long", train=[long_prompt])
    alg = build_algorithm(FLParams("fedavg"), 1)
    with pytest.raises(ClientError, match=r"no trainable sample at max_length 64 \(1: no loss token left after truncation\)"):
        run_client_round(instruction_for(alg, runtime.slot.initial_state(0), "long"), data, runtime)
