"""PEFT methods beyond LoRA (DoRA, IA³, prompt, P-, prefix tuning): the loss equals peft's own forward,
cached decoding equals the uncached forward, and each trains, resumes, saves and evaluates (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from fedllm.config import ConfigError, build_config
from fedllm.engine.simulation import Session
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.models.peft_methods import PEFT_METHODS, input_logits
from fedllm.runs import RunError
from fedllm.train.objective import token_loss_sum
from tests.conftest import kill_in_round, oracle_drafts, run_sim, synthetic_records, tiny_config

METHODS = ["lora", "dora", "ia3", "prompt", "ptuning", "prefix"]


def _session(method: str, **peft) -> Session:
    cfg = build_config({"model": {"name": "tiny"}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                        "peft": {"method": method, "num_virtual_tokens": 3, **peft}})
    s = Session.create(cfg)
    g = torch.Generator().manual_seed(0)  # a non-trivial adapter: away from every method's identity start
    s.slot.load({k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in s.slot.initial_state(1).items()})
    s.base.model.eval()
    return s


def test_every_method_is_registered():
    assert set(METHODS) <= set(PEFT_METHODS)


@pytest.mark.parametrize("method,peft", [(m, {}) for m in METHODS] + [("prefix", {"prefix_projection": True,
                                                                                   "encoder_hidden_size": 16})])
def test_loss_equals_peft_forward(method, peft):
    """The fast loss path (decoder + head on labelled positions only) where it is exact, peft's forward
    (which adds virtual tokens) elsewhere: either way, the mean loss is the one peft's model computes."""
    s = _session(method, **peft)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    loss, n = token_loss_sum(s.base.model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    ref = s.base.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert n == 7
    assert float(loss) / n == pytest.approx(float(ref), rel=1e-6, abs=1e-6)
    # and the adapter matters: the base model's loss differs
    with s.base.model.disable_adapter():
        base_loss, _ = token_loss_sum(s.base.model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert abs(float(base_loss) - float(loss)) > 1e-3


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix", "lora"])
def test_cached_batched_decoding_equals_the_uncached_forward(method, monkeypatch):
    """Our KV-cache decoding loop adds a prompt method's virtual tokens once, at the positions training
    gives them: its greedy answers equal argmax decoding with peft's full forward, row by row, one token a
    step and with drafts checked several tokens a step."""
    s = _session(method)
    lm = TextModel(s.base.model, s.base.tokenizer, s.base.precision)
    prompts = ["Repeat alpha three times.", "Hi"]
    d = Decoding(temperature=0.0, max_new_tokens=6)
    expected = {}
    for prompt in prompts:
        ids, out = lm.encode(prompt), []
        for _ in range(6):
            with torch.no_grad():
                tok = int(torch.argmax(input_logits(s.base.model, torch.tensor([ids + out]))[0, -1]))
            if tok in lm.stop_ids:
                break
            out.append(tok)
        expected[tuple(ids)] = out
    want = [lm.tokenizer.decode(expected[tuple(lm.encode(p))], skip_special_tokens=True) for p in prompts]
    for answers in ({}, expected):  # no drafts; drafts of the answers, some wrong
        drafts = oracle_drafts(monkeypatch, answers)
        assert lm.generate([GenRequest(str(i), p, d) for i, p in enumerate(prompts)], batch_size=2) == want
        assert any(drafts.drafted) == bool(answers)


def _run(cfg, resume: bool = False):
    """A quiet run on the dataset file its config names (so `fedllm eval` splits it the same way)."""
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.eval.heldout import HeldoutEvaluator

    sim = Simulation(cfg, reporter=Reporter(quiet=True), evaluator=HeldoutEvaluator.from_config(cfg.eval))
    return sim, sim.run(resume=resume)


def _cfg(tmp_path, method: str, **peft):
    data = tmp_path / "fed.json"
    data.write_text(json.dumps(synthetic_records()))
    return tiny_config(tmp_path, name=method, data={"dataset": str(data)}, fl={"rounds": 2},
                       train={"local_steps": 2, "lr": 5e-2}, eval={"every": 1, "at_start": True},
                       peft={"method": method, "num_virtual_tokens": 4, **peft})


@pytest.mark.parametrize("method", ["ia3", "prompt", "ptuning"])
def test_method_trains_saves_and_evaluates_from_its_saved_adapter(tmp_path, method):
    from peft import PeftModel

    from fedllm.eval.runner import EvalSettings, run_evaluation
    from fedllm.eval.target import resolve_targets
    from fedllm.models.tiny import build_tiny_model

    cfg = _cfg(tmp_path, method)
    sim, summary = _run(cfg)
    evals = summary["eval_history"]
    assert evals[-1]["pooled_loss"] < evals[0]["pooled_loss"]  # it trains
    assert summary["adapter_parameters"] == sim.slot.num_parameters() > 0
    # `fedllm eval` of the run scores its final adapter as training measured it
    rows = run_evaluation(resolve_targets(["base", str(cfg.run_dir)], out_root=tmp_path / "eval"),
                          EvalSettings(metrics=["heldout"]))
    assert rows[1]["heldout_loss"] == pytest.approx(summary["final_eval"]["pooled_loss"], rel=1e-5)
    if method == "ia3":  # IA³ starts at ones: the initial adapter is the base model
        assert rows[0]["heldout_loss"] == pytest.approx(evals[0]["pooled_loss"], rel=1e-5)
    # and the saved directory is a peft adapter that peft itself loads, with the same outputs
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    theirs = PeftModel.from_pretrained(build_tiny_model(), str(cfg.run_dir / "adapter")).eval()
    sim.slot.load(sim.final_state)
    sim.slot.model.eval()
    with torch.no_grad():
        assert torch.allclose(input_logits(theirs, ids), input_logits(sim.slot.model, ids), atol=1e-5)


def test_prompt_method_resumes_bit_identically(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "ptuning")
    _, whole = run_sim(cfg)
    cut = cfg.model_copy(update={"name": "cut"})
    kill_in_round(monkeypatch, cut, 2)
    sim, resumed = run_sim(cut, resume=True)
    from fedllm.models.adapters import TRAINABLE_FILE
    from safetensors.torch import load_file

    a = load_file(str(cfg.run_dir / "adapter" / TRAINABLE_FILE))
    b = load_file(str(cut.run_dir / "adapter" / TRAINABLE_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_eval"]["pooled_loss"] == whole["final_eval"]["pooled_loss"]


def test_settings_that_do_not_fit_the_method_are_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="unknown PEFT method 'prefx'.*did you mean 'prefix'"):
        tiny_config(tmp_path, peft={"method": "prefx"})
    with pytest.raises(ConfigError, match="freeze_a .*peft.method=prompt has none"):
        tiny_config(tmp_path, peft={"method": "prompt"}, lora={"freeze_a": True})
    # FFA-LoRA's default under DP applies to LoRA-shaped adapters only
    assert not tiny_config(tmp_path, peft={"method": "ia3"}, fl={"dp": {"mode": "fedllm-bench", "sigma": 0.01}}).ffa_lora
    with pytest.raises(RunError, match="ia3_target_modules \\['nope'\\] not found"):
        Session.create(tiny_config(tmp_path, peft={"method": "ia3", "ia3_target_modules": ["nope"],
                                                   "ia3_feedforward_modules": []}))
    with pytest.raises(RunError, match="A matrices, and this adapter has none"):
        run_sim(_cfg(tmp_path, "prompt").model_copy(update={"fl": tiny_config(tmp_path, fl={"algorithm": "fedsa"}).fl}))


def test_a_plain_peft_prompt_adapter_directory_is_evaluated_as_peft_loads_it(tmp_path):
    """Outside a run, P-tuning's saved form (its MLP's output) is a prompt: the target says so, and the
    slot built from it gives the run's own outputs."""
    import shutil

    from fedllm.eval.runner import load_targets_model, select_target
    from fedllm.eval.target import resolve_target

    cfg = _cfg(tmp_path, "ptuning")
    sim, _ = _run(cfg)
    plain = tmp_path / "plain-adapter"
    shutil.copytree(cfg.run_dir / "adapter", plain)
    target = resolve_target(str(plain), model="tiny")
    assert target.kind == "adapter" and target.cfg.peft.method == "prompt" and target.cfg.peft.num_virtual_tokens == 4
    base, slot = load_targets_model([target])
    select_target(target, base, slot)
    sim.slot.load(sim.final_state)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(input_logits(base.model.eval(), ids), input_logits(sim.slot.model.eval(), ids), atol=1e-5)


def test_peft_table_runs_a_row_per_method_and_writes_the_table(tmp_path):
    from rich.console import Console

    from fedllm.bench.peft_table import run_peft_table

    cfg_file = tmp_path / "c.yaml"
    data = tmp_path / "fed.json"
    data.write_text(json.dumps(synthetic_records()))
    cfg_file.write_text(json.dumps({"model": {"name": "tiny"}, "data": {"dataset": str(data), "max_length": 64},
                                    "fl": {"rounds": 1, "clients_per_round": 2}, "train": {"local_steps": 1},
                                    "peft": {"num_virtual_tokens": 4}, "lora": {"r": 4}}))
    rows = run_peft_table(cfg_file, tmp_path / "out", [], Console(file=None, quiet=True), ["lora", "prompt"])
    lora, prompt = rows
    assert lora["trainable_params"] == 2 * 2 * (4 * 64 + 64 * 4) + 2 * 2 * (4 * 64 + 32 * 4)  # q,k,v,o × 2 layers
    assert prompt["trainable_params"] == 4 * 64
    assert prompt["bytes_up"] < lora["bytes_up"] and lora["start_loss"] > 0 and prompt["final_loss"] > 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| lora | " in table and "| prompt | " in table
    # a second call reuses the finished runs
    again = run_peft_table(cfg_file, tmp_path / "out", [], Console(file=None, quiet=True), ["lora", "prompt"])
    assert again == rows


def test_prefix_starts_as_if_random_vocabulary_tokens_preceded_the_input():
    """Li & Liang's initialisation from real words: before training, the prefix's keys and values are
    those of n vocabulary tokens, so the model's logits equal the base model's on those tokens + input."""
    cfg = build_config({"model": {"name": "tiny"}, "peft": {"method": "prefix", "num_virtual_tokens": 3}})
    s = Session.create(cfg)
    state = s.slot.initial_state(7)
    s.slot.load(state)
    model = s.base.model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    words = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(7)  # the slot's first draw from its seed: the prefix's tokens
    prefix = torch.randint(0, words.shape[0], (1, 3), generator=gen)
    with torch.no_grad():
        ours = input_logits(model, ids)
        theirs = model.get_base_model()(input_ids=torch.cat([prefix, ids], dim=1)).logits[:, 3:]
    assert torch.allclose(ours, theirs, atol=1e-5)
