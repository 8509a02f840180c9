"""DPO: the loss and rewards equal TRL's on the same batch (both references), unusable pairs are
dropped with their reason, every method trains with it, and its statistics reach the run's files."""

from __future__ import annotations

import copy
import json
import tempfile

import pytest
import torch

from fedllm.config import build_config
from fedllm.data.formatting import get_template
from fedllm.data.schema import ClientData, FederatedDataset, InstructionSample, Message, PreferenceSample
from fedllm.engine.metrics import read_metrics
from fedllm.engine.simulation import RunError
from fedllm.models.adapters import AdapterSlot, attach_adapter
from fedllm.models.precision import Precision
from fedllm.models.tiny import build_tiny_model, build_tiny_tokenizer
from fedllm.train.cost import ModelShape
from fedllm.train.dpo import DPO
from fedllm.train.task import Task
from tests.conftest import WORDS, tiny_config
from tests.conftest import run_sim as run

CPU = Precision("fp32", torch.device("cpu"))


def pairs(words=("alpha", "bravo", "charlie")) -> list[PreferenceSample]:
    return [PreferenceSample((Message("user", f"What is {w}?"),), f"{w} is a word.", f"I do not know {w}.") for w in words]


def preference_federation(num_clients: int = 4, per_client: int = 10) -> FederatedDataset:
    """Each client prefers a reply that names the word over one that refuses: easy to learn, hard to
    get by length alone (both replies have similar lengths)."""
    clients = []
    for c in range(num_clients):
        ps = [PreferenceSample((Message("user", f"Name {WORDS[(i + c) % len(WORDS)]} {i}."),),
                               f"{WORDS[(i + c) % len(WORDS)]} it is.", "I will not say.") for i in range(per_client + c)]
        clients.append(ClientData(f"user{c}", train=ps[2:], test=ps[:2]))
    return FederatedDataset.from_clients("prefs", clients)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def trl_trainer(model, ref_model, tok):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=tempfile.mkdtemp(), beta=0.1, report_to=[], use_cpu=True, bf16=False, fp16=False,
                     per_device_train_batch_size=3)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, processing_class=tok,
                      train_dataset=Dataset.from_list([{"prompt": "x", "chosen": "y", "rejected": "z"}]))


def trl_inputs(batch):
    """Our collated pairs as TRL's batch: [chosen; rejected] rows and a mask of the completion tokens."""
    return {"input_ids": torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]),
            "attention_mask": torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]]),
            "completion_mask": torch.cat([batch["chosen_labels"] != -100, batch["rejected_labels"] != -100]).long()}


def trl_says(trainer, batch) -> tuple[float, dict[str, float]]:
    loss = float(trainer._compute_loss(trainer.model, trl_inputs(batch), return_outputs=False).detach())
    m = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, {"reward_accuracy": m["rewards/accuracies"], "chosen_reward": m["rewards/chosen"],
                  "rejected_reward": m["rewards/rejected"], "margin": m["rewards/margins"]}


def random_adapter(slot: AdapterSlot, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in slot.read().items()}


def test_loss_and_rewards_equal_trls_with_the_base_model_as_reference(tok):
    torch.manual_seed(0)
    base = build_tiny_model(tok)
    ref_model = copy.deepcopy(base)  # TRL's explicit reference: the base weights
    model = attach_adapter(base, build_config({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    slot = AdapterSlot(model)
    slot.load(random_adapter(slot, 1))
    obj = DPO(beta=0.1, reference="base")
    batch = obj.collate([obj.encode(p, get_template("chat", tok), tok, 64) for p in pairs()], tok.pad_token_id)
    model.train()
    loss, n, stats = obj.loss_stats(model, batch)
    trl_loss, trl_stats = trl_says(trl_trainer(model, ref_model, tok), batch)
    assert n == 3 and float(loss.detach()) / n == pytest.approx(trl_loss, abs=1e-6)
    for k, v in trl_stats.items():
        assert stats[k] / n == pytest.approx(v, abs=1e-6), k
    assert stats["chosen_reward"] != 0 and stats["rejected_reward"] != 0


def test_round_start_reference_equals_trls_copied_ref_adapter(tok):
    """TRL ≥ 1.0 given a PeftModel copies its adapter into "ref": the adapter as training began."""
    torch.manual_seed(0)
    model = attach_adapter(build_tiny_model(tok), build_config({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    slot = AdapterSlot(model)
    start = random_adapter(slot, 1)
    slot.load(start)
    trainer = trl_trainer(model, None, tok)  # copies the current adapter as its reference
    obj = DPO(beta=0.1, reference="round_start")
    feats = [obj.encode(p, get_template("chat", tok), tok, 64) for p in pairs()]
    obj.begin_round(model, feats, [0, 1, 2], tok.pad_token_id, CPU, 3)  # reference log-probs with the start adapter
    assert all("ref_logps" in f for f in feats)
    slot.load(random_adapter(slot, 2))  # the policy moves on, as after local steps
    model.train()
    batch = obj.collate(feats, tok.pad_token_id)
    loss, n, stats = obj.loss_stats(model, batch)
    trl_loss, trl_stats = trl_says(trainer, batch)
    assert float(loss.detach()) / n == pytest.approx(trl_loss, abs=1e-6)
    for k, v in trl_stats.items():
        assert stats[k] / n == pytest.approx(v, abs=1e-6), k


def test_unusable_pairs_are_dropped_with_their_reason(tok):
    task = Task.create("dpo", "chat", tok, 24)
    same = PreferenceSample((Message("user", "Hi"),), "hello", " hello ")
    empty = PreferenceSample((Message("user", "Hi"),), "hello", "   ")
    fine = pairs()[:2]
    enc = task.encode([*fine, same, empty])
    assert len(enc) == 2 and enc.reasons == {"chosen and rejected are the same text": 1,
                                             "empty chosen or rejected reply": 1}
    # a long prompt is cut from the left, so each reply keeps its completion tokens (FedLLM-Bench's TRL
    # truncated the same way); a reply longer than max_length keeps its first tokens
    long_prompt = PreferenceSample((Message("user", "word " * 60),), "yes", "no")
    long_reply = PreferenceSample((Message("user", "Hi"),), "word " * 60, "no")
    enc = task.encode([long_prompt, long_reply])
    assert len(enc) == 2 and enc.dropped == 0
    for f in enc.features:
        assert len(f["chosen_input_ids"]) <= 24 and any(x != -100 for x in f["chosen_labels"]) and f["pairs"] == 1


def test_data_of_the_wrong_kind_names_the_objective_that_fits(tmp_path):
    cfg = tiny_config(tmp_path / "a", train={"objective": "dpo"})
    with pytest.raises(RunError, match=r"train.objective=dpo trains on PreferenceSamples, but the data holds "
                                       r"InstructionSamples: use train.objective=sft"):
        run(cfg)
    with pytest.raises(RunError, match="use train.objective=dpo"):
        run(tiny_config(tmp_path / "b"), dataset=preference_federation())
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize("algorithm", ["local", "fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad",
                                       "fedadam", "fedyogi"])
def test_every_method_trains_with_dpo(tmp_path, algorithm):
    cfg = tiny_config(tmp_path, fl={"algorithm": algorithm, "rounds": 1}, train={"objective": "dpo", "local_steps": 2},
                      eval={"at_start": False})
    sim, summary = run(cfg, dataset=preference_federation())
    client = read_metrics(cfg.run_dir / "metrics.jsonl", "client")[0]
    assert client["loss"] > 0 and 0 <= client["reward_accuracy"] <= 1 and "margin" in client
    assert all(torch.isfinite(v).all() for v in sim.final_state.values())
    assert summary["final_eval"]["pooled_ppl"] is None and "reward_accuracy" in summary["final_eval"]


def test_dpo_learns_preferences_and_reports_them(tmp_path):
    cfg = tiny_config(tmp_path, fl={"rounds": 4, "clients_per_round": 4},
                      train={"objective": "dpo", "local_steps": 4, "lr": 2e-2}, eval={"every": 2})
    sim, summary = run(cfg, dataset=preference_federation())
    evals = read_metrics(cfg.run_dir / "metrics.jsonl", "eval")
    assert evals[0]["reward_accuracy"] == 0.0 and evals[0]["margin"] == 0.0  # policy = reference at round 0
    assert evals[-1]["reward_accuracy"] >= 0.75 and evals[-1]["margin"] > evals[1]["margin"] > 0
    assert evals[-1]["pooled_loss"] < evals[0]["pooled_loss"] - 0.05
    steps = read_metrics(cfg.run_dir / "metrics.jsonl", "step")
    assert all({"loss", "reward_accuracy", "chosen_reward", "rejected_reward", "margin"} <= set(s) for s in steps)
    # FLOPs: the policy's forward and backward on both replies plus the reference's forward
    shape = ModelShape.of(sim.slot.model)
    for c in read_metrics(cfg.run_dir / "metrics.jsonl", "client"):
        t, lab = c["tokens"], c["labelled_tokens"]
        expected = (4 * shape.body_params * t + 6 * shape.adapter_params * t + 6 * shape.head_params * lab
                    + 2 * shape.body_params * t + 2 * shape.head_params * lab)
        assert c["flops"] == expected
    from typer.testing import CliRunner

    from fedllm.cli import app

    res = CliRunner().invoke(app, ["report", str(cfg.run_dir)])
    assert res.exit_code == 0 and "reward acc" in res.output


def test_dpo_trains_from_the_cli_on_a_fed_chatbotpa_fixture(tmp_path, monkeypatch):
    """Fed-ChatbotPA built from Chatbot Arena rows in their published format, then DPO from the CLI."""
    from typer.testing import CliRunner

    from fedllm.cli import app
    from tests.test_sources_public import arena_rows, write_parquet

    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    data = write_parquet(tmp_path / "arena.parquet", arena_rows())
    args = ["train", "-q", f"output_dir={tmp_path / 'runs'}", "name=pa", "model.name=tiny", "lora.r=4",
            "data.dataset=fed-chatbotpa", f"data.build={{data_files: {data}, min_samples: 4}}", "data.max_length=96",
            "train.objective=dpo", "train.local_steps=dynamic", "train.epochs=1", "train.batch_size=2",
            "fl.rounds=2", "fl.clients_per_round=2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "runs" / "pa" / "summary.json").read_text())
    assert summary["clients"] >= 3 and summary["final_eval"]["reward_accuracy"] is not None
    sft = [a for a in args if not a.startswith(("name=", "train.objective="))] + ["name=sft", "train.objective=sft"]
    res = CliRunner().invoke(app, sft)
    assert res.exit_code == 2 and "use train.objective=dpo" in " ".join(res.output.split())


def test_instruction_data_is_not_silently_zero_loss_under_dpo(tmp_path):
    data = FederatedDataset.from_clients("x", [ClientData("a", train=[InstructionSample.single_turn("q", "a")] * 3)])
    with pytest.raises(RunError, match="use train.objective=sft"):
        run(tiny_config(tmp_path, fl={"clients_per_round": 1}, train={"objective": "dpo"}), dataset=data)


def test_held_out_reference_is_computed_once_and_is_the_base(tok, monkeypatch):
    from fedllm.eval.heldout import evaluate_heldout

    torch.manual_seed(0)
    model = attach_adapter(build_tiny_model(tok), build_config({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}))
    slot = AdapterSlot(model)
    slot.load(random_adapter(slot, 3))
    obj = DPO()
    feats = {"c": [obj.encode(p, get_template("chat", tok), tok, 64) for p in pairs()]}
    fresh = {"c": [dict(f) for f in feats["c"]]}
    calls = {"n": 0}
    original = DPO.reference_logps

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    monkeypatch.setattr(DPO, "reference_logps", counting)
    first = evaluate_heldout(model, obj, feats, tok.pad_token_id, CPU, batch_size=8)
    assert calls["n"] == 1 and all("ref_logps" in f for f in feats["c"])
    again = evaluate_heldout(model, obj, feats, tok.pad_token_id, CPU, batch_size=8)
    assert calls["n"] == 1 and again.pooled_loss == first.pooled_loss  # cached: the base never changes
    with model.disable_adapter():  # the cached reference is the base model's: with no adapter, rewards are 0
        base = evaluate_heldout(model, obj, fresh, tok.pad_token_id, CPU, batch_size=8)
    assert base.stats["margin"] == pytest.approx(0.0, abs=1e-6) and first.stats["margin"] != 0
