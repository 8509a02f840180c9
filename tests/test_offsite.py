"""Offsite-tuning (FedOT): the emulator's layers, the emulator view of the one loaded model, LoRA on the
adapter layers only, and a tiny run that trains on the emulator and evaluates the full model."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from fedllm.config import build_config
from fedllm.engine.metrics import read_metrics
from fedllm.engine.simulation import Session
from fedllm.eval.heldout import HeldoutEvaluator
from fedllm.models.adapters import AdapterSlot, attach_adapter
from fedllm.models.offsite import Emulator, OffsiteError, lora_layers, plan_emulator
from fedllm.models.tiny import build_tiny_model
from fedllm.runs import RunError
from fedllm.seeding import derive_seed
from fedllm.train.cost import ModelShape
from tests.conftest import kill_in_round, run_sim, tiny_config

LAYERS = 8


def test_kept_layers_match_hand_written_lists():
    # SmolLM2-135M: 30 layers, k = 2 -> 26 middle layers; keep round(26·0.8) = 21 at 2 + ⌊i·25/20⌋
    p = plan_emulator(30, 2, 0.2)
    assert p.adapter == (0, 1, 28, 29)
    assert p.dropped == (6, 11, 16, 21, 26)
    assert p.kept == (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 17, 18, 19, 20, 22, 23, 24, 25, 27, 28, 29)
    # 0.5: round(13) middle layers at 2 + ⌊i·25/12⌋
    assert plan_emulator(30, 2, 0.5).kept == (0, 1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 27, 28, 29)
    assert plan_emulator(8, 2, 0.5).kept == (0, 1, 2, 5, 6, 7)  # m = 4, n = 2: the first and last middle layers
    assert plan_emulator(8, 1, 0.5).kept == (0, 1, 3, 6, 7)  # m = 6, n = 3: offsets 0, 2, 5
    assert plan_emulator(5, 2, 0.9).kept == (0, 1, 3, 4)  # the one middle layer dropped
    assert plan_emulator(8, 2, 0.1).dropped == ()  # round(4 · 0.9) = 4: nothing to drop (the run warns)
    with pytest.raises(OffsiteError, match=r"offsite.adapter_layers=2: the model has 4 decoder layers.*<= 1"):
        plan_emulator(4, 2, 0.5)
    with pytest.raises(OffsiteError, match=r"at least 3 decoder layers .*this one has 2"):
        plan_emulator(2, 1, 0.5)


def _peft_tiny(k: int = 2, drop: float = 0.5):
    cfg = build_config({"model": {"name": "tiny"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                        "offsite": {"drop_rate": drop, "adapter_layers": k}})
    model = build_tiny_model(num_layers=LAYERS)
    model = attach_adapter(model, cfg, layers=lora_layers(model, cfg.offsite))
    return model, AdapterSlot(model), Emulator(model, k, drop)


def _manual_forward(model, ids: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Logits of running only ``layers`` of the decoder, step by step as LlamaModel.forward does."""
    from transformers.masking_utils import create_causal_mask

    base = model.get_base_model()
    inner = base.model
    h = inner.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    mask = create_causal_mask(config=base.config, inputs_embeds=h, attention_mask=None, cache=None, position_ids=pos)
    pe = inner.rotary_emb(h, position_ids=pos)
    for i in layers:
        h = inner.layers[i](h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
    return base.lm_head(inner.norm(h))


def test_emulator_view_runs_the_kept_layers_and_restores_the_full_model():
    model, slot, emu = _peft_tiny()
    with torch.no_grad():  # a non-zero adapter, so the LoRA path is part of what must match
        slot.load({k: torch.randn_like(v) * 0.1 for k, v in slot.read().items()})
    model.eval()
    ids = torch.randint(0, 900, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        full = _manual_forward(model, ids, list(range(LAYERS)))
        with emu() as m:
            assert m is model and len(model.get_base_model().model.layers) == 6
            inside = model(input_ids=ids).logits
            with emu():  # nested (a personal phase inside a round): still the emulator
                assert torch.equal(model(input_ids=ids).logits, inside)
        after = model(input_ids=ids).logits
        emulated = _manual_forward(model, ids, [0, 1, 2, 5, 6, 7])
    torch.testing.assert_close(inside, emulated, rtol=0, atol=1e-5)
    torch.testing.assert_close(before, full, rtol=0, atol=1e-5)
    assert not torch.allclose(inside, before, atol=1e-3)  # dropping layers changes the model
    assert torch.equal(before, after)  # the full model, bit for bit
    with pytest.raises(RuntimeError, match="boom"), emu():
        raise RuntimeError("boom")
    assert model.get_base_model().model.layers is emu.full  # restored even after an error


def test_lora_lives_on_the_adapter_layers_only():
    _, slot, _ = _peft_tiny(k=2)
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in slot.keys()}
    assert layers == {0, 1, 6, 7}
    assert len(slot.keys()) == 4 * 4 * 2  # 4 layers × (q, k, v, o)_proj × (A, B)


@pytest.fixture
def eight_layers(monkeypatch):
    """model.name=tiny with 8 decoder layers (enough for an adapter of 2 + 2 and a middle to drop)."""
    import fedllm.models.tiny as tiny

    monkeypatch.setattr(tiny, "build_tiny_model", functools.partial(tiny.build_tiny_model, num_layers=LAYERS))


def _ot_config(tmp_path, **sections):
    """FedOT on the 8-layer tiny model: drop half of the 4 middle layers, 2 rounds of 2 local steps."""
    return tiny_config(tmp_path, **{"offsite": {"drop_rate": 0.5, "adapter_layers": 2}, "fl": {"rounds": 2},
                                    "train": {"local_steps": 2}, **sections})


def test_fedot_trains_on_the_emulator_and_evaluates_the_full_model(tmp_path, eight_layers):
    cfg = _ot_config(tmp_path, eval={"every": 0, "at_start": True})
    sim, summary = run_sim(cfg)
    off = summary["offsite"]
    assert off["kept_layers"] == [0, 1, 2, 5, 6, 7] and off["adapter_layers"] == [0, 1, 6, 7]
    # message sizes: the emulator lacks 2 of the 8 layers (fp32 weights, 4 bytes each)
    layer = sum(p.numel() for p in build_tiny_model(num_layers=LAYERS).model.layers[0].parameters())
    full = sum(p.numel() for p in build_tiny_model(num_layers=LAYERS).parameters())
    assert off["full_parameters"] == full and off["emulator_parameters"] == full - 2 * layer
    assert off["emulator_bytes"] == 4 * (full - 2 * layer) and off["full_bytes"] == 4 * full
    events = read_metrics(cfg.run_dir / "metrics.jsonl")
    setup = next(e for e in events if e["event"] == "setup")
    assert setup["offsite"] == off
    # the clients' FLOPs are the emulator's: its body lacks the two dropped layers
    body_full = ModelShape.of(sim.slot.model).body_params
    assert setup["body_parameters"] == body_full - 2 * layer
    # training lowered the emulator's held-out loss (round 0 is the initial adapter)
    hist = summary["eval_history"]
    assert hist[-1]["emulator"]["pooled_loss"] < hist[0]["emulator"]["pooled_loss"]
    assert hist[0]["emulator"]["pooled_loss"] != hist[0]["pooled_loss"]
    # the reported plug-in loss is the full model's with the final adapter; the emulator's is the view's
    ev = HeldoutEvaluator.from_config(cfg.eval)
    ev.prepare(sim.task, sim.session.base.precision, sim.fleet.tests(sim.client_ids))
    sim.slot.load(sim.final_state)
    assert ev(sim.slot.model)["pooled_loss"] == pytest.approx(hist[-1]["pooled_loss"], abs=1e-6)
    with sim.session.view():
        assert ev(sim.slot.model)["pooled_loss"] == pytest.approx(hist[-1]["emulator"]["pooled_loss"], abs=1e-6)
    # the top adapter layer trained through the emulator; the saved adapter names its layers for peft
    start = sim.slot.initial_state(derive_seed(cfg.seed, "lora-init"))
    moved = {k for k in sim.final_state if not torch.equal(sim.final_state[k], start[k])}
    assert any(".layers.7." in k for k in moved) and any(".layers.0." in k for k in moved)
    saved = json.loads((cfg.run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [0, 1, 6, 7]


def test_fedot_resume_is_bit_identical(tmp_path, eight_layers, monkeypatch):
    whole = _ot_config(tmp_path / "a", eval={"every": 0, "at_start": False})
    sim, _ = run_sim(whole)
    cut = _ot_config(tmp_path / "b", eval={"every": 0, "at_start": False})
    kill_in_round(monkeypatch, cut, 2)
    resumed, _ = run_sim(cut, resume=True)
    assert all(torch.equal(sim.final_state[k], resumed.final_state[k]) for k in sim.final_state)


def test_offsite_settings_errors_and_warnings(tmp_path, eight_layers):
    with pytest.raises(RunError, match=r"offsite.adapter_layers=4: the model has 8 decoder layers"):
        Session.create(_ot_config(tmp_path, offsite={"drop_rate": 0.5, "adapter_layers": 4}))
    off = tiny_config(tmp_path, offsite={"adapter_layers": 3})
    assert any("offsite.adapter_layers=3 is ignored" in w for w in off.warnings())
    assert Session.key(off) != Session.key(_ot_config(tmp_path))
    with pytest.raises(Exception, match="drop_rate"):
        build_config({"offsite": {"drop_rate": 1.0}})
