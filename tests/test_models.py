"""Model loading, LoRA slot and precision choice on the tiny model; the embedded model in integration tests."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fedllm.config import ModelConfig, build_config
from fedllm.data.formatting import encode_sft, get_template
from fedllm.data.schema import InstructionSample
from fedllm.models.adapters import AdapterSlot, attach_adapter, load_adapter_state, save_adapter
from fedllm.models.loading import ModelError, load_base_model
from fedllm.models.calibration import cpu_flags
from fedllm.models.precision import Precision, resolve_precision
from fedllm.models.stored_weights import StoredLinear, packing_available
from fedllm.models.tiny import build_tiny_model, save_tiny
from fedllm.train.objectives import get_objective, token_loss_sum

CPU = torch.device("cpu")


def _shaped(hidden: int, inter: int):
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(hidden_size=hidden, intermediate_size=inter))


def test_precision_auto_decides_by_a_cached_measurement(tmp_path):
    """`auto` on a CPU keeps the faster precision at the model's shapes, by a margin, records its timings
    and why, and measures once per machine, torch and shapes (faked timings: the decision, not the clock)."""
    from fedllm.models.calibration import CACHE_FILE, MARGIN, calibrate

    calls = []

    def timer(seconds):
        def fake(precision, hidden, inter):
            calls.append((precision, hidden, inter))
            return seconds[precision]
        return fake

    big = _shaped(576, 1536)
    slower = calibrate(big, tmp_path, timer({"fp32": 1.0, "bf16": 1.9}))  # the avx512_bf16 Xeon
    assert slower.choice == "fp32" and slower.seconds == {"fp32": 1.0, "bf16": 1.9} and not slower.cached
    assert "0.53x" in slower.reason and len(calls) == 4 and set(calls) == {("fp32", 576, 1536), ("bf16", 576, 1536)}
    again = calibrate(big, tmp_path, timer({"fp32": 1.0, "bf16": 0.1}))  # cached: not measured again
    assert again.choice == "fp32" and again.cached and len(calls) == 4
    faster = calibrate(_shaped(960, 2560), tmp_path, timer({"fp32": 1.43, "bf16": 1.0}))  # Zen 5
    assert faster.choice == "bf16" and "1.43x faster" in faster.reason
    assert calibrate(_shaped(1024, 4096), None, timer({"fp32": MARGIN, "bf16": 1.0})).choice == "fp32"  # a tie: fp32
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 2
    (tmp_path / CACHE_FILE).write_text("{broken")  # a damaged cache is measured again, then repaired
    assert calibrate(big, tmp_path, timer({"fp32": 2.0, "bf16": 1.0})).choice == "bf16"
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())) == 1
    small = calibrate(_shaped(64, 256), tmp_path, timer({"fp32": 9.0, "bf16": 1.0}))
    assert small.choice == "fp32" and "too small" in small.reason  # tiny models (tests) never autocast


def test_precision_settings_and_where_auto_is_recorded(tmp_path, monkeypatch):
    from fedllm.models import calibration

    assert resolve_precision("fp32", CPU) == ("fp32", {"reason": "set by model.precision"})
    assert resolve_precision("bf16", CPU)[0] == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", CPU)
    monkeypatch.setattr(calibration, "time_block", lambda p, h, f: {"fp32": 3.0, "bf16": 1.0}[p])
    name, why = resolve_precision("auto", CPU, _shaped(512, 2048), tmp_path)
    assert name == "bf16" and why["seconds"] == {"fp32": 3.0, "bf16": 1.0} and "3.00x faster" in why["reason"]
    assert "sse2" in cpu_flags("processor : 0\nflags\t\t: fpu sse2 avx2\n")


def test_bf16_autocast_changes_compute_dtype_only():
    lin = torch.nn.Linear(4, 4)
    with Precision("bf16", CPU).autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with Precision("fp32", CPU).autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.float32
    assert lin.weight.dtype == torch.float32


def test_local_directory_and_errors(tmp_path):
    path = save_tiny(tmp_path / "m")
    base = load_base_model(build_config({"model": {"name": str(path)}}).model)
    assert base.model.config.hidden_size == 64 and base.tokenizer.chat_template
    with pytest.raises(ModelError, match="is a path but not a model directory"):
        load_base_model(build_config({"model": {"name": str(tmp_path)}}).model)
    with pytest.raises(ModelError, match="no such GGUF file"):
        load_base_model(build_config({"model": {"name": str(tmp_path / "x.gguf")}}).model)
    # a local path that does not exist is named as such, not reported as a malformed hub id
    for missing in (str(tmp_path / "nope"), "./models/nope", "~/nope-model"):
        with pytest.raises(ModelError, match=r"no such directory; give a local model directory"):
            load_base_model(build_config({"model": {"name": missing}}).model)
    # neither a directory nor a usable hub id (offline here): one line, no traceback
    with pytest.raises(ModelError, match=r"model.name='not a/valid id' could not be loaded"):
        load_base_model(build_config({"model": {"name": "not a/valid id"}}).model)


def test_adapter_slot_round_trip_and_key_checks(tmp_path):
    model = attach_adapter(build_tiny_model(), build_config({"lora": {"r": 4}}))
    slot = AdapterSlot(model)
    assert slot.keys() and all(".default." not in k for k in slot.keys())  # peft's saved key names
    init = slot.initial_state(seed=3)
    assert all(torch.count_nonzero(v) == 0 for k, v in init.items() if "lora_B" in k)
    assert all(torch.count_nonzero(v) > 0 for k, v in init.items() if "lora_A" in k)
    assert all(torch.equal(init[k], slot.initial_state(seed=3)[k]) for k in init)
    slot.load(init)
    got = slot.read()
    assert all(torch.equal(got[k], init[k]) for k in init)
    got[next(iter(got))].add_(1.0)  # a read is a copy
    assert all(torch.equal(slot.read()[k], init[k]) for k in init)
    with pytest.raises(KeyError, match="missing"):
        slot.load({k: v for k, v in list(init.items())[1:]})
    k0 = next(iter(init))
    with pytest.raises(ValueError, match="shape"):
        slot.load({**init, k0: torch.zeros(1)})
    with pytest.raises(ValueError, match="not found in the model"):
        attach_adapter(build_tiny_model(), build_config({"lora": {"target_modules": ["query"]}}))
    # saving leaves the live slot untouched and round-trips exactly
    other = {k: torch.randn_like(v) for k, v in init.items()}
    save_adapter(slot, other, tmp_path / "adapter")
    assert all(torch.equal(slot.read()[k], init[k]) for k in init)
    loaded = load_adapter_state(tmp_path / "adapter")
    assert all(torch.equal(loaded[k], other[k]) for k in other)


def test_selective_head_loss_equals_full_logits_loss():
    """The LM head on labelled positions only gives HF's loss (mean over labelled tokens)."""
    model = build_tiny_model()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (2, 12), generator=gen)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, :9] = -100
    mask = torch.ones_like(ids)
    s, n = token_loss_sum(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert n == 7 + 3 - 0  # shifted: positions 5..11 and 9..11 predict labelled tokens
    assert torch.allclose(s / n, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_in_chunks_without_gradient_gives_the_same_bits(dtype, monkeypatch):
    """Evaluation computes token losses in chunks of rows (no fp32 copy of all the logits): the same bits
    as one call; with a gradient wanted it stays one call."""
    from fedllm.train import objective

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(700, 4000, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, 4000, (700,), generator=gen)
    whole = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    calls: list[int] = []
    real = objective.F.cross_entropy
    monkeypatch.setattr(objective.F, "cross_entropy", lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k))
    with torch.no_grad():
        assert torch.equal(objective._token_cross_entropy(logits, targets), whole)
    assert calls == [256, 256, 188]
    calls.clear()
    with_grad = objective._token_cross_entropy(logits.float().requires_grad_(), targets)
    assert torch.equal(with_grad.detach(), whole) and calls == [700]


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.integration
def test_embedded_model_loads_trains_and_formats():
    cfg = build_config({})
    base = load_base_model(cfg.model)
    tok = base.tokenizer
    assert base.model.config.model_type == "llama" and base.model.config.num_hidden_layers == 30
    assert getattr(base.model.config, "quantization_config", None) is None  # rebuilt, savable
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    sample = InstructionSample.single_turn("Add 2 and 3.", "2 + 3 = 5")
    enc = encode_sft(sample, get_template("chat", tok), tok, 128)
    trained = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != -100])
    assert trained == "2 + 3 = 5<|im_end|>"
    model = attach_adapter(base.model, cfg)
    slot = AdapterSlot(model)
    assert slot.num_parameters() == 1_843_200  # r=16 on q/k/v/o of 30 layers
    obj = get_objective("sft")
    batch = obj.collate([enc], tok.pad_token_id)
    opt = torch.optim.AdamW(list(slot.params.values()), lr=1e-3)
    losses = []
    model.train()
    torch.manual_seed(0)
    for _ in range(3):
        s, n = obj.loss_sum(model, batch)
        (s / n).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(s.detach()) / n)
    assert losses[-1] < losses[0]


def test_damaged_adapter_file_is_named(tmp_path):
    from fedllm.models.adapters import AdapterFileError

    slot = AdapterSlot(attach_adapter(build_tiny_model(), build_config({"lora": {"r": 4}})))
    out = save_adapter(slot, slot.initial_state(0), tmp_path / "adapter")
    path = out / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(AdapterFileError, match=r"adapter_model.safetensors is damaged and cannot be read"):
        load_adapter_state(out)


def test_weights_stored_in_bf16_give_autocast_its_own_numbers():
    """Evaluation under bf16 autocast stores the frozen linear weights in bf16 once, instead of autocast
    re-casting them at every decoding step: logits are bit-identical, adapters stay fp32, the tied
    embedding is untouched, and fp32 or DoRA evaluation is left alone."""
    from fedllm.config import build_config
    from fedllm.models.adapters import attach_adapter
    from fedllm.models.stored_weights import store_for_inference

    base = load_base_model(ModelConfig(name="tiny", precision="fp32", device="cpu"))
    model = attach_adapter(base.model, build_config({"model": {"name": "tiny"}, "lora": {"r": 4, "alpha": 8}}))
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)
    model.eval()
    ids = torch.randint(3, 200, (2, 12))
    bf16 = Precision("bf16", CPU)
    with torch.no_grad(), bf16.autocast():
        before = model(input_ids=ids).logits
    emb = model.get_base_model().get_input_embeddings().weight
    assert store_for_inference(model, Precision("fp32", CPU)) == 0
    dora = attach_adapter(load_base_model(ModelConfig(name="tiny", precision="fp32", device="cpu")).model,
                          build_config({"model": {"name": "tiny"}, "peft": {"method": "dora"}, "lora": {"r": 4, "alpha": 8}}))
    assert store_for_inference(dora, bf16) == 0
    assert store_for_inference(model, bf16) > 0
    with torch.no_grad(), bf16.autocast():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    assert model.get_base_model().get_input_embeddings().weight.dtype == torch.float32 and emb.dtype == torch.float32
    assert model.get_base_model().get_output_embeddings().weight.dtype == torch.bfloat16
    if packing_available(torch.bfloat16, CPU):  # held in oneDNN's layout too, with the same logits (above)
        assert model.get_base_model().model.layers[0].mlp.up_proj.packed is not None


def test_a_packed_linear_layer_computes_autocasts_bits():
    """A frozen bf16 layer whose weight is held in oneDNN's blocked layout gives what bf16 autocast's
    F.linear gives over the fp32 weight, bit for bit, whatever the input's shape, strides and row count;
    with gradients wanted it takes F.linear itself."""
    if not packing_available(torch.bfloat16, CPU):
        pytest.skip("oneDNN does not run bf16 matmuls on this CPU")
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 24)
    packed = StoredLinear(linear, torch.bfloat16, pack=True)
    assert packed.weight.dtype == torch.bfloat16 and not packed.weight.requires_grad
    inputs = [torch.randn(1, 40), torch.randn(3, 7, 40), torch.randn(5, 9, 40)[:, -2:], torch.randn(64, 40)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x in inputs:
            assert torch.equal(packed(x), linear(x)), x.shape
    x = torch.randn(4, 40, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = packed(x)
    y.float().sum().backward()
    assert torch.equal(y, F.linear(x.bfloat16(), packed.weight, packed.bias)) and x.grad is not None


def test_inference_weights_are_bf16_only_inside_and_the_fp32_parameters_come_back():
    """Held-out evaluation during a bf16 run stores the frozen weights in bf16 for its duration: the same
    logits as autocast over fp32 weights, and afterwards the very fp32 parameters (and the tied head)."""
    from fedllm.config import build_config
    from fedllm.models.adapters import attach_adapter
    from fedllm.models.stored_weights import inference_weights

    base = load_base_model(ModelConfig(name="tiny", precision="fp32", device="cpu"))
    model = attach_adapter(base.model, build_config({"model": {"name": "tiny"}, "lora": {"r": 4, "alpha": 8}}))
    inner = model.get_base_model()
    tied = inner.get_output_embeddings().weight is inner.get_input_embeddings().weight
    before = {n: p for n, p in model.named_parameters()}
    ids = torch.randint(3, 200, (2, 12))
    bf16 = Precision("bf16", CPU)
    model.eval()
    with torch.no_grad(), bf16.autocast():
        reference = model(input_ids=ids).logits
    with inference_weights(model, bf16) as changed, torch.no_grad(), bf16.autocast():
        assert changed > 0 and inner.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert torch.equal(model(input_ids=ids).logits, reference)
    after = {n: p for n, p in model.named_parameters()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert all(p.dtype == torch.float32 for p in after.values())
    assert (inner.get_output_embeddings().weight is inner.get_input_embeddings().weight) == tied
    with inference_weights(model, Precision("fp32", CPU)) as changed:
        assert changed == 0
