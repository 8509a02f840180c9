"""`fedllm export`: the adapter merged into the base gives the PeftModel's logits, in the Hugging Face
layout; the GGUF loads (transformers; llama.cpp where installed) and generates the same tokens."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from typer.testing import CliRunner

from fedllm.cli import app
from fedllm.config import build_config, dump_config
from fedllm.eval.runner import load_targets_model, select_target
from fedllm.eval.target import resolve_target
from fedllm.export.gguf_file import source_gguf, write_gguf
from fedllm.export.merge import ExportError, merged_model, save_merged
from tests.conftest import synthetic_records, tiny_config

runner = CliRunner()
IDS = torch.tensor([[1, 5, 17, 300, 42, 7, 99, 250, 3, 64]])


def _train(tmp, **sections):
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.eval.heldout import HeldoutEvaluator

    data = tmp / "fed.json"
    data.write_text(json.dumps(synthetic_records()))
    cfg = tiny_config(tmp, data={"dataset": str(data)}, fl={"rounds": 2}, eval={"every": 0, "at_start": False},
                      **sections)
    Simulation(cfg, reporter=Reporter(quiet=True), evaluator=HeldoutEvaluator.from_config(cfg.eval)).run()
    return cfg.run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("export"), name="fedavg", train={"lr": 5e-2})


@torch.no_grad()
def _peft_logits(spec: str, adapter: bool = True) -> torch.Tensor:
    t = resolve_target(spec)
    base, slot = load_targets_model([t])
    select_target(t, base, slot)
    base.model.eval()
    if adapter:
        return base.model(input_ids=IDS).logits
    with base.model.disable_adapter():
        return base.model(input_ids=IDS).logits


@torch.no_grad()
def test_the_merged_model_and_its_gguf_give_the_runs_logits(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    ref = _peft_logits(str(tiny_run))
    base_only = _peft_logits(str(tiny_run), adapter=False)
    res = runner.invoke(app, ["export", str(tiny_run), "--out", str(tmp_path / "merged"), "--gguf",
                              str(tmp_path / "m.gguf")])
    assert res.exit_code == 0, res.output
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    got = merged(input_ids=IDS).logits
    assert (got - ref).abs().max() < 1e-4 < (base_only - ref).abs().max()  # the adapter is in, and it mattered
    info = json.loads((tmp_path / "merged" / "fedllm_export.json").read_text())
    assert info["label"] == "fedavg" and info["template"] == "chat" and info["dtype"] == "float32"
    assert all(stat.S_IMODE(f.stat().st_mode) & 0o044 for f in (tmp_path / "merged").iterdir())  # readable by others
    gg = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    assert (gg(input_ids=IDS).logits - ref).abs().max() < 0.05  # f16 weights
    want = merged.generate(IDS, max_new_tokens=8, do_sample=False)
    assert torch.equal(gg.generate(IDS, max_new_tokens=8, do_sample=False), want)
    # bf16 weights when asked; no leftover temporary files beside the outputs
    m = merged_model(str(tiny_run))
    save_merged(m, tmp_path / "bf16", "bfloat16")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    write_gguf(m, tmp_path / "q8.gguf", "q8_0")
    q8 = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="q8.gguf", dtype=torch.float32)
    assert (q8(input_ids=IDS).logits - ref).abs().max() < 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16", "m.gguf", "merged", "q8.gguf"]


def test_llama_cpp_loads_the_gguf_and_generates(tiny_run, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp comes with the judge-server extra")
    import numpy as np

    ref = _peft_logits(str(tiny_run))[0].numpy()
    write_gguf(merged_model(str(tiny_run)), tmp_path / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval(IDS[0].tolist())
        assert np.abs(np.array(llm.scores[: IDS.shape[1]]) - ref).max() < 0.02
        assert llm.create_completion("Hello", max_tokens=4, temperature=0)["choices"][0]["text"] is not None
    finally:
        llm.close()


def test_what_cannot_be_merged_is_one_clear_line(tmp_path):
    run = _train(tmp_path, name="prompt", peft={"method": "prompt", "num_virtual_tokens": 4})
    with pytest.raises(ExportError, match="virtual tokens"):
        merged_model(str(run))
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "virtual tokens" in res.output and not (tmp_path / "x").exists()
    res = runner.invoke(app, ["export", "base", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no adapter to merge" in res.output
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "x"), "--dtype", "int4"])
    assert res.exit_code == 2 and "float32, bfloat16, float16" in res.output


@pytest.mark.slow  # ~40 s: the 135M model merged, written as GGUF and loaded back
@pytest.mark.integration
@torch.no_grad()
def test_the_embedded_model_round_trips_through_export(tmp_path):
    """A LoRA on SmolLM2-135M-Instruct: merged logits match the PeftModel's; the GGUF, written with the
    embedded GGUF's tokenizer, loads and generates the merged model's greedy tokens."""
    from transformers import AutoModelForCausalLM

    from fedllm.models.adapters import AdapterSlot, attach_adapter, save_adapter
    from fedllm.models.loading import load_base_model

    cfg = build_config({"name": "emb", "output_dir": str(tmp_path), "model": {"precision": "fp32"}})
    base = load_base_model(cfg.model)
    model = attach_adapter(base.model, cfg)
    slot = AdapterSlot(model)
    torch.manual_seed(0)
    state = {k: (torch.randn_like(v) * 0.02 if "lora_B" in k else v) for k, v in slot.read().items()}
    run = tmp_path / "emb"
    save_adapter(slot, state, run / "adapter")
    (run / "config.yaml").write_text(dump_config(cfg))
    ref = _peft_logits(str(run))
    m = merged_model(str(run))
    assert (m.model(input_ids=IDS).logits - ref).abs().max() < 1e-3
    write_gguf(m, tmp_path / "emb.gguf", "f16", source_gguf(cfg.model.name))
    gg = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="emb.gguf", dtype=torch.float32)
    assert (gg(input_ids=IDS).logits - ref).abs().max() < 0.1
    prompt = base.tokenizer("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    a = m.model.generate(**prompt, max_new_tokens=6, do_sample=False)
    b = gg.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)
