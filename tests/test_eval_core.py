"""`fedllm eval` core: generation, scoring, targets, the runner's caches and result files (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedllm.config import ModelConfig
from fedllm.data.formatting import get_template
from fedllm.eval.context import EvalContext, EvalError
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.eval.runner import EvalSettings, run_evaluation, write_results
from fedllm.eval.target import TargetError, resolve_target, resolve_targets
from fedllm.models.loading import load_base_model
from fedllm.models.precision import Precision
from tests.conftest import oracle_drafts, synthetic_records, tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def tiny_lm() -> TextModel:
    base = load_base_model(ModelConfig(name="tiny", precision="fp32", device="cpu"))
    return TextModel(base.model, base.tokenizer, base.precision)


def _prompts(lm: TextModel) -> list[str]:
    tpl = get_template("chat", lm.tokenizer)
    from fedllm.data.formatting import prompt_text
    from fedllm.data.schema import Message

    qs = ["Repeat alpha.", "Spell bravo please, slowly and carefully.", "Hi", "What is the sum of two and two?"]
    return [prompt_text([Message("user", q)], tpl) for q in qs]


def test_batched_greedy_generation_equals_one_at_a_time(tiny_lm):
    d = Decoding(temperature=0.0, max_new_tokens=12)
    reqs = [GenRequest(str(i), p, d) for i, p in enumerate(_prompts(tiny_lm))]
    together = tiny_lm.generate(reqs, batch_size=4)
    alone = [tiny_lm.generate([r], batch_size=1)[0] for r in reqs]
    assert together == alone
    assert all(isinstance(t, str) for t in together) and any(together)
    # greedy = argmax of the model's own next-token distribution, token by token
    ids = tiny_lm.encode(reqs[0].prompt)
    out = []
    for _ in range(12):
        logits = tiny_lm.model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        tok = int(torch.argmax(logits))
        if tok in tiny_lm.stop_ids:
            break
        out.append(tok)
    assert together[0] == tiny_lm.tokenizer.decode(out, skip_special_tokens=True)


def test_sampling_depends_on_item_seed_not_on_batch(tiny_lm):
    d = Decoding(temperature=1.0, top_p=0.9, max_new_tokens=10)
    reqs = [GenRequest(str(i), p, d, seed=100 + i) for i, p in enumerate(_prompts(tiny_lm))]
    a = tiny_lm.generate(reqs, batch_size=4)
    b = tiny_lm.generate(reqs[::-1], batch_size=2)[::-1]
    assert a == b
    c = tiny_lm.generate([GenRequest("x", reqs[0].prompt, d, seed=7)], batch_size=1)
    others = {tiny_lm.generate([GenRequest("x", reqs[0].prompt, d, seed=s)])[0] for s in range(8, 14)}
    assert len(others | set(c)) > 1  # different seeds give different samples
    # rows with different temperatures (MT-Bench's per-category ones) share a batch, each sampled by its own
    mixed = [GenRequest(str(i), r.prompt, Decoding(temperature=t, max_new_tokens=10), seed=100 + i)
             for i, (r, t) in enumerate(zip(reqs, (0.0, 0.7, 1.0, 0.1)))]
    batches = []
    real = TextModel._prefill
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TextModel, "_prefill", lambda self, b, *a: batches.append(len(b)) or real(self, b, *a))
        together = tiny_lm.generate(mixed, batch_size=4)
    assert batches == [4]
    assert together == [tiny_lm.generate([r])[0] for r in mixed]


def test_stop_strings_cut_the_answer(tiny_lm):
    p = _prompts(tiny_lm)[0]
    full = tiny_lm.generate([GenRequest("a", p, Decoding(max_new_tokens=16))])[0]
    assert len(full) > 3
    stop = full[2:4]
    cut = tiny_lm.generate([GenRequest("a", p, Decoding(max_new_tokens=16, stop=(stop,)))])[0]
    assert cut == full[: full.find(stop)]


def test_a_streamed_answer_joins_to_the_generated_one(tiny_lm):
    p = _prompts(tiny_lm)
    for d, seed in ((Decoding(max_new_tokens=14), 0), (Decoding(temperature=1.0, top_p=0.9, max_new_tokens=14), 5)):
        req = GenRequest("a", p[1], d, seed=seed)
        pieces = list(tiny_lm.stream(req))
        assert len(pieces) > 3 and all(pieces)
        assert "".join(pieces) == tiny_lm.generate([req])[0]


@torch.no_grad()
def test_a_row_ends_when_the_block_it_waits_for_closes(tiny_lm, monkeypatch):
    """``end_after_block_defining`` ends a row at the first token after which the predicate holds of its
    answer; a row without it, in the same batch, decodes on."""
    p = _prompts(tiny_lm)[:2]
    ids, out = tiny_lm.encode(p[0]), []
    for _ in range(16):  # greedy by hand: the tokens of the full answer
        tok = int(torch.argmax(tiny_lm.model(input_ids=torch.tensor([ids + out])).logits[0, -1]))
        if tok in tiny_lm.stop_ids:
            break
        out.append(tok)
    full = tiny_lm.tokenizer.decode(out, skip_special_tokens=True)
    assert len(out) > 6
    marker = tiny_lm.tokenizer.decode(out[3:5], skip_special_tokens=True)
    seen = []
    monkeypatch.setattr("fedllm.eval.generation.closed_block_defines",
                        lambda text, name: seen.append(name) or (name in text))
    reqs = [GenRequest("a", p[0], Decoding(max_new_tokens=16, end_after_block_defining=marker)),
            GenRequest("b", p[1], Decoding(max_new_tokens=16))]
    cut, other = tiny_lm.generate(reqs, batch_size=2)
    k = next(k for k in range(1, len(out) + 1) if marker in tiny_lm.tokenizer.decode(out[:k], skip_special_tokens=True))
    assert k < len(out) and cut == tiny_lm.tokenizer.decode(out[:k], skip_special_tokens=True) and full.startswith(cut)
    assert set(seen) == {marker} and len(seen) == k  # asked once per token of the waiting row only
    assert other == tiny_lm.generate([reqs[1]])[0]
    assert Decoding().key() == json.dumps({"max_new_tokens": 256, "stop": [], "temperature": 0.0, "top_p": 1.0},
                                          sort_keys=True)  # keys of answers cached before the field existed


@torch.no_grad()
def test_continuation_logprobs_match_a_manual_forward(tiny_lm):
    ctx = "Question: which letter?\nAnswer:"
    ids = tiny_lm.encode(ctx)

    def by_hand(cont: str) -> float:  # sum of the continuation tokens' log-probabilities in one forward
        full = tiny_lm.encode(ctx + cont)
        lp = torch.log_softmax(tiny_lm.model(input_ids=torch.tensor([full])).logits[0], -1)
        return sum(float(lp[i - 1, full[i]]) for i in range(len(ids), len(full)))

    conts = [" A", " B", " alpha bravo"]
    for got, c in zip(tiny_lm.continuation_logprobs(ctx, conts), conts):
        assert got == pytest.approx(by_hand(c), abs=1e-4)
    # single-token continuations take the one-forward path and agree with the same sums
    vocab = tiny_lm.tokenizer.get_vocab()
    singles = [t for t in ("a", "b", "c") if t in vocab and len(tiny_lm.encode(ctx + t)) == len(ids) + 1]
    assert len(singles) >= 2
    for got, c in zip(tiny_lm.continuation_logprobs(ctx, singles), singles):
        assert got == pytest.approx(by_hand(c), abs=1e-4)
    assert all(x < 0 for x in tiny_lm.continuation_logprobs(ctx, singles))



def test_contexts_sharing_a_few_shot_block_run_it_once_with_the_same_scores(tiny_lm):
    """Consecutive MMLU questions of one subject share their few-shot block: it runs once and the rest of
    each context runs on its keys and values, with the log-probabilities of a whole forward; the next subject's
    block is run once again."""
    from fedllm.eval.generation import MIN_SHARED_PREFIX

    def block(subject: str) -> str:
        return "".join(f"Question {i} about {subject}: which letter fits?\nAnswer: {'abcd'[i % 4]}\n\n" for i in range(12))

    contexts = [block("art") + f"Question: item {q}?\nAnswer:" for q in range(3)]
    contexts += [block("law") + f"Question: case {q}?\nAnswer:" for q in range(2)]
    assert len(tiny_lm.encode(block("art"))) > MIN_SHARED_PREFIX
    vocab = tiny_lm.tokenizer.get_vocab()
    letters = [t for t in ("a", "b", "c") if t in vocab]
    alone = [tiny_lm.continuation_logprobs(c, letters) for c in contexts]  # one call each: no prefix kept
    tokens: list[int] = []
    hook = tiny_lm.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: tokens.append(a[0].shape[1]))
    try:
        together = list(tiny_lm.continuation_logprobs_each([(c, letters) for c in contexts]))
    finally:
        hook.remove()
    for got, want in zip(together, alone):
        assert got == pytest.approx(want, abs=1e-5) and max(range(len(got)), key=got.__getitem__) == max(
            range(len(want)), key=want.__getitem__)
    lengths = [len(tiny_lm.encode(c)) for c in contexts]
    # art: its shared block, then three rests; law: a new block, then two rests
    assert len(tokens) == 7 and tokens[0] > MIN_SHARED_PREFIX and tokens[4] > MIN_SHARED_PREFIX
    assert [tokens[0] + t for t in tokens[1:4]] == lengths[:3] and [tokens[4] + t for t in tokens[5:]] == lengths[3:]

# ---------------------------------------------------------------------- runs and targets
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from fedllm.engine.progress import Reporter
    from fedllm.engine.simulation import Simulation
    from fedllm.eval.heldout import HeldoutEvaluator

    tmp = tmp_path_factory.mktemp("evalrun")
    data = tmp / "fed.json"
    data.write_text(json.dumps(synthetic_records()))
    cfg = tiny_config(tmp, name="fedavg", data={"dataset": str(data)}, fl={"rounds": 2},
                      eval={"every": 0, "at_start": False}, checkpoint={"every": 1, "keep": 5})
    Simulation(cfg, reporter=Reporter(quiet=True), evaluator=HeldoutEvaluator.from_config(cfg.eval)).run()
    return cfg.run_dir


def test_targets_resolve_runs_checkpoints_adapters_and_base(tiny_run, tmp_path):
    run = resolve_target(str(tiny_run))
    assert run.kind == "run" and run.label == "fedavg" and run.adapter_file.name == "adapter_model.safetensors"
    assert run.out_dir == tiny_run / "eval" / "final"
    ck = resolve_target(f"{tiny_run}@round-1")
    assert ck.kind == "checkpoint" and ck.label == "fedavg@round-1" and ck.out_dir == tiny_run / "eval" / "round-1"
    assert resolve_target(str(tiny_run / "checkpoints" / "round-1")).adapter_file == ck.adapter_file
    assert resolve_target(str(tiny_run / "adapter")).kind == "run"
    bare = tmp_path / "my-adapter"
    import shutil

    shutil.copytree(tiny_run / "adapter", bare)
    ad = resolve_target(str(bare), model="tiny")
    assert ad.kind == "adapter" and ad.cfg.lora.r == 4 and ad.cfg.model.name == "tiny"
    base, r = resolve_targets(["base", str(tiny_run)])
    assert base.kind == "base" and base.adapter_file is None and base.cfg.model.name == "tiny"
    assert base.cfg.data.dataset == r.cfg.data.dataset  # base is compared on the runs' own data
    with pytest.raises(TargetError, match="no such run"):
        resolve_target(str(tmp_path / "nope"))
    with pytest.raises(TargetError, match="neither a run directory"):
        resolve_target(str(tmp_path))
    with pytest.raises(TargetError, match="round-N"):
        resolve_target(f"{tiny_run}@7")


class _ScriptedClient:
    """Stands in for the OpenAI SDK client: answers judge prompts by a rule and counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, *, messages, **kw):
        self.calls += 1
        user = messages[-1]["content"]
        # turn-2 (multi-turn) prompts get an unparsable verdict; everything else a rating
        text = "I cannot decide." if "<|The Start of Assistant A's Conversation with User|>" in user else "Fine. Rating: [[6]]"
        if kw.get("response_format"):
            text = json.dumps({"explanation": "ok", "rating": 6}) if "Conversation with User" not in user else "{bad json"
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])


def test_eval_runs_every_metric_writes_files_and_resumes(tiny_run, tmp_path, monkeypatch):
    from fedllm.eval import judge as judge_mod

    client = _ScriptedClient()
    real = judge_mod.Judge
    monkeypatch.setattr(judge_mod, "Judge", lambda cfg, cache_path=None: real(cfg, cache_path=cache_path, client=client))
    targets = resolve_targets(["base", str(tiny_run)], out_root=tmp_path / "out")
    names = ["heldout", "advbench", "mmlu", "gsm8k", "humaneval", "mt_bench", "embed_sim"]
    settings = EvalSettings(metrics=names, data_dir=FIXTURES,
                            options={"*": {"max_items": 2, "max_new_tokens": 8}, "humaneval": {"n": 2, "k": "1,2"}},
                            judge=judge_mod.JudgeConfig(model="scripted", output="text"))
    rows = run_evaluation(targets, settings)
    base, fed = rows
    assert base["target"] == "base" and fed["target"] == "fedavg"
    for r in rows:
        assert r["heldout_loss"] > 0 and 0 <= r["advbench"] <= 100 and r["mmlu"] in (0.0, 50.0, 100.0)
        assert r["mt1"] == 6.0 and r["mt2"] is None and r["mt_bench"] is None  # turn 2 unparsable: excluded, not averaged
        assert r["humaneval"] is not None and "humaneval@2" in r
        assert -1 <= r["embed_sim"] <= 1
    assert base["heldout_loss"] != fed["heldout_loss"]  # the adapter is really swapped in
    # the held-out loss of the run's final adapter equals what training measured at the end
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert fed["heldout_loss"] == pytest.approx(summary["final_eval"]["pooled_loss"], rel=1e-5)

    mt = json.loads((tiny_run / "eval" / "final" / "mt_bench" / "summary.json").read_text())
    assert mt["summary"]["turn2"] == {"judged": 0, "unparsable": 2, "failed": 0}
    items = [json.loads(x) for x in (tiny_run / "eval" / "final" / "mt_bench" / "items.jsonl").read_text().splitlines()]
    assert len(items) == 2 and items[0]["scores"][1] is None and "I cannot decide" in items[0]["judgments"][1]
    gen_lines = (tiny_run / "eval" / "final" / "generations.jsonl").read_text().splitlines()
    calls = client.calls

    # a second call reuses everything: no generation, no judge call
    monkeypatch.setattr(TextModel, "generate", lambda *a, **k: pytest.fail("regenerated a finished item"))
    again = run_evaluation(targets, settings)
    assert client.calls == calls
    assert [r["mmlu"] for r in again] == [r["mmlu"] for r in rows]

    # --redo recomputes the metric from the per-item caches (still no generation and no judge call)
    again = run_evaluation(targets, EvalSettings(**{**settings.__dict__, "redo": True}))
    assert client.calls == calls and again[1]["mt1"] == 6.0
    assert (tiny_run / "eval" / "final" / "generations.jsonl").read_text().splitlines() == gen_lines

    json_path, csv_path = write_results(rows, names, tmp_path / "out")
    table = json.loads(json_path.read_text())
    assert [r["target"] for r in table["rows"]] == ["base", "fedavg"]
    assert table["columns"][:3] == ["heldout_loss", "advbench", "mmlu"]
    assert any("unparsable" in n for n in table["notes"])
    assert csv_path.read_text().splitlines()[0].startswith("target,kind,heldout_loss,advbench,mmlu")


def test_an_interrupted_generation_resumes_from_its_items(tiny_run, tmp_path, monkeypatch):
    targets = resolve_targets([str(tiny_run)], out_root=tmp_path)
    settings = EvalSettings(metrics=["gsm8k"], data_dir=FIXTURES, options={"*": {"max_new_tokens": 6}}, redo=True)
    calls = []
    real = TextModel._prefill

    def dying(self, batch, *args):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch, *args)

    monkeypatch.setattr(TextModel, "_prefill", dying)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(targets, EvalSettings(**{**settings.__dict__, "batch_size": 1}))
    monkeypatch.setattr(TextModel, "_prefill", real)
    seen = []
    monkeypatch.setattr(TextModel, "_prefill", lambda self, b, *a: seen.append(len(b)) or real(self, b, *a))
    rows = run_evaluation(targets, EvalSettings(**{**settings.__dict__, "batch_size": 1}))
    n_test = len((FIXTURES / "gsm8k" / "test.jsonl").read_text().splitlines())
    assert len(seen) == n_test - 1  # the item finished before the kill is not redone
    assert rows[0]["gsm8k"] is not None


def test_a_damaged_adapter_is_named(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    adapter = copy / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:64])
    with pytest.raises(EvalError, match=r"adapter_model.safetensors is damaged and cannot be read"):
        run_evaluation(resolve_targets([str(copy)], out_root=tmp_path), EvalSettings(metrics=["heldout"]))


def test_judge_metrics_without_a_judge_fail_clearly(tiny_run, tmp_path):
    with pytest.raises(EvalError, match="mt_bench needs an LLM judge"):
        run_evaluation(resolve_targets([str(tiny_run)]), EvalSettings(metrics=["mt_bench"], data_dir=FIXTURES))
    with pytest.raises(EvalError, match="unknown metric 'mmmlu'; known: .*mmlu.*; did you mean 'mmlu'"):
        run_evaluation(resolve_targets([str(tiny_run)]), EvalSettings(metrics=["mmmlu"]))


def test_unknown_metric_option_is_an_error(tiny_run, tmp_path):
    settings = EvalSettings(metrics=["gsm8k"], data_dir=FIXTURES, options={"gsm8k": {"shotz": 3, "max_items": 1}}, redo=True)
    with pytest.raises(EvalError, match="unknown option.*gsm8k: shotz"):
        run_evaluation(resolve_targets([str(tiny_run)], out_root=tmp_path), settings)


def test_subset_is_round_robin_over_groups():
    ctx = EvalContext(metric="m", target=None, model=None, template=None, fingerprint="f", out_dir=Path("."),
                      options={"max_items": 4})
    items = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("c", 2)]
    assert ctx.subset(items, group=lambda x: x[0]) == [("a", 1), ("a", 2), ("b", 1), ("c", 1)]
    assert ctx.subset(items) == items[:4]
    with pytest.raises(EvalError, match="m.max_items='x': expected int"):
        EvalContext(metric="m", target=None, model=None, template=None, fingerprint="f", out_dir=Path("."),
                    options={"max_items": "x"}).subset(items, default=3)


def test_cli_eval_prints_a_table_and_writes_results(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from fedllm.cli import app

    res = CliRunner().invoke(app, ["eval", "base", str(tiny_run), "--metrics", "heldout,mmlu", "--data-dir", str(FIXTURES),
                                   "--max-items", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "heldout" in res.output and "loss" in res.output and "fedavg" in res.output and "base" in res.output
    assert (tmp_path / "o" / "results.csv").is_file()
    assert (tmp_path / "o" / "base-tiny" / "mmlu" / "items.jsonl").is_file()
    bad = CliRunner().invoke(app, ["eval", str(tiny_run), "--metrics", "mt_bench", "--data-dir", str(FIXTURES)])
    assert bad.exit_code == 2 and "mt_bench needs an LLM judge" in bad.output
    bad = CliRunner().invoke(app, ["eval", str(tiny_run), "--metrics", "mmlu", "--set", "gsm8k.shots=2"])
    assert bad.exit_code == 2 and "not being evaluated" in bad.output
    listed = CliRunner().invoke(app, ["eval", "base", "--metrics", "list"])
    assert listed.exit_code == 0 and "humaneval" in listed.output and "mt_bench" in listed.output


def test_rows_finish_independently_whether_or_not_the_cache_drops_them(tiny_lm, monkeypatch):
    """Finished rows leave the batch (their KV-cache rows are dropped); a cache without that ability
    keeps them idle. Either way each answer is the one its prompt gets alone."""
    p = _prompts(tiny_lm)
    full = [tiny_lm.generate([GenRequest(str(i), q, Decoding(max_new_tokens=16))])[0] for i, q in enumerate(p)]
    # one shared decoding whose stop strings end the rows at different steps
    d = Decoding(max_new_tokens=16, stop=tuple(f[2 + i: 4 + i] for i, f in enumerate(full) if len(f) > 8))
    reqs = [GenRequest(str(i), q, d) for i, q in enumerate(p)]
    alone = [tiny_lm.generate([r])[0] for r in reqs]
    assert len(set(map(len, alone))) > 1  # the rows really do finish at different steps
    assert tiny_lm.generate(reqs, batch_size=4) == alone
    from transformers.cache_utils import Cache

    monkeypatch.delattr(Cache, "batch_select_indices")
    assert tiny_lm.generate(reqs, batch_size=4) == alone


def test_ref_judge_reports_per_language_means_and_excludes_unparsable(tiny_run, tmp_path, monkeypatch):
    from fedllm.eval import judge as judge_mod

    testset = tmp_path / "aya.json"  # FedLLM-Bench's Fed-Aya test-set layout: language -> [{instruction, reference}]
    testset.write_text(json.dumps({
        "English": [{"instruction": "What is the capital of Peru?", "reference": "Lima."},
                    {"instruction": "Name a prime above ten.", "reference": "Eleven."}],
        "French": [{"instruction": "Bonjour, comment vas-tu ?", "reference": "Bien, merci."}]}))

    seen: list[str] = []

    def create(*, messages, **kw):
        user = messages[-1]["content"]
        seen.append(user)
        text = "Rating: [[8]]" if "capital" in user else ("[[2]]" if "Bonjour" in user else "no verdict")
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    real = judge_mod.Judge
    monkeypatch.setattr(judge_mod, "Judge", lambda cfg, cache_path=None: real(cfg, cache_path=cache_path, client=client))
    settings = EvalSettings(metrics=["ref_judge", "vicuna"], data_dir=FIXTURES,
                            options={"*": {"max_new_tokens": 4}, "ref_judge": {"testset": str(testset)}},
                            judge=judge_mod.JudgeConfig(model="scripted", output="text"))
    [row] = run_evaluation(resolve_targets([str(tiny_run)], out_root=tmp_path), settings)
    s = row["_metrics"]["ref_judge"]["summary"]
    assert s["aya_rules"] is True and s["unparsable"] == 1 and s["judged"] == 2
    assert s["per_language"]["English"] == {"mean": 8.0, "std": 0.0, "n": 1}  # the unparsable one is left out
    assert s["per_language"]["French"]["mean"] == 2.0
    assert row["ref_judge"] == 5.0  # mean of the per-language means, (8 + 2) / 2
    # the Aya rules reach the judge, and the reference answer is shown to it
    items = [json.loads(x) for x in (tiny_run / "eval" / "final" / "ref_judge" / "items.jsonl").read_text().splitlines()]
    assert [it["language"] for it in items] == ["English", "English", "French"]
    peru = next(u for u in seen if "capital of Peru" in u)
    assert "Lima." in peru and "language" in peru.lower()
    assert row["vicuna"] is None and row["_metrics"]["vicuna"]["summary"]["unparsable"] == 3  # no rating in any verdict


def test_metrics_list_needs_no_target_and_a_missing_target_is_one_line():
    """The README's `fedllm eval --metrics list` once failed with "Missing argument 'targets'"."""
    from typer.testing import CliRunner

    from fedllm.cli import app

    listed = CliRunner().invoke(app, ["eval", "--metrics", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "heldout" in listed.output and "mt_bench" in listed.output
    bare = CliRunner().invoke(app, ["eval", "--metrics", "heldout"])
    assert bare.exit_code == 2 and "name what to evaluate" in bare.output and "Traceback" not in bare.output


def test_embed_sim_refuses_a_test_set_without_references_before_generating(tiny_run, tmp_path, monkeypatch):
    """FedLLM-Bench's Chatbot/WildChat test sets are [{instruction[, language]}]: embed_sim once generated every
    answer for them, then showed "-" and exited 0."""
    chatbot = tmp_path / "testset.json"
    chatbot.write_text(json.dumps([{"instruction": "Say hi."}, {"instruction": "Name a colour.", "language": "English"}]))
    monkeypatch.setattr(TextModel, "generate", lambda *a, **k: pytest.fail("generated although nothing can be compared"))
    settings = EvalSettings(metrics=["embed_sim"], options={"embed_sim": {"testset": str(chatbot)}})
    with pytest.raises(EvalError, match=r"embed_sim compares answers with reference answers.*testset.json.*'reference'"):
        run_evaluation(resolve_targets([str(tiny_run)], out_root=tmp_path / "o"), settings)


def test_ref_judge_on_a_wildchat_style_list_uses_the_general_prompt_and_the_plain_mean(tiny_run, tmp_path, monkeypatch):
    """FedLLM-Bench's WildChat test set is a list whose items carry a `language` (38 English, 9 Russian, one each
    of three more): its `language` once switched on the Aya rules and a mean of per-language means, so one
    Japanese item weighed as much as 38 English ones. FedLLM-Bench judges it with its general prompt and a
    plain mean."""
    from fedllm.eval import judge as judge_mod

    testset = tmp_path / "wildchat.json"
    testset.write_text(json.dumps([{"instruction": f"English question {i}?", "language": "English"} for i in range(3)]
                                  + [{"instruction": "Japanese question?", "language": "Japanese"}]))
    seen: list[str] = []

    def create(*, messages, **kw):
        user = messages[-1]["content"]
        seen.append(user)
        text = "Rating: [[10]]" if "Japanese" in user else "Rating: [[2]]"
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=text))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    real = judge_mod.Judge
    monkeypatch.setattr(judge_mod, "Judge", lambda cfg, cache_path=None: real(cfg, cache_path=cache_path, client=client))

    def run(options):
        settings = EvalSettings(metrics=["ref_judge"], options={"*": {"max_new_tokens": 4},
                                                                "ref_judge": {"testset": str(testset), **options}},
                                judge=judge_mod.JudgeConfig(model="scripted", output="text"), redo=True)
        return run_evaluation(resolve_targets([str(tiny_run)], out_root=tmp_path), settings)[0]

    row = run({})
    s = row["_metrics"]["ref_judge"]["summary"]
    assert row["ref_judge"] == 4.0  # (3 × 2 + 10) / 4, not (2 + 10) / 2
    assert s["aya_rules"] is False and s["average"] == "items" and s["mean_of_language_means"] == 6.0
    assert s["per_language"]["Japanese"]["mean"] == 10.0
    assert all("written in the same language as the instruction" not in u for u in seen)
    asked = run({"average": "languages", "aya_rules": True})  # the per-language view, when asked
    assert asked["ref_judge"] == 6.0 and asked["_metrics"]["ref_judge"]["summary"]["aya_rules"] is True


def test_ref_judge_fedllm_bench_preset_uses_the_papers_prompt_and_settings(tiny_run, tmp_path, monkeypatch):
    """Comparability: FedLLM-Bench judges with its own prompts at temperature 0.2 (2,048 tokens) and answers
    with up to 1,024 new tokens; the default is this project's wording, temperature 0.0 and 256 tokens."""
    from fedllm.eval import judge as judge_mod

    testset = tmp_path / "aya.json"
    testset.write_text(json.dumps({"English": [{"instruction": "What is the capital of Peru?", "reference": "Lima."}]}))
    calls: list[dict] = []

    def create(**kw):
        calls.append(kw)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="Rating: [[7]]"))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    real = judge_mod.Judge
    monkeypatch.setattr(judge_mod, "Judge", lambda cfg, cache_path=None: real(cfg, cache_path=cache_path, client=client))
    budgets: list[int] = []
    original = TextModel.generate

    def spy(self, reqs, *a, **k):
        budgets.extend(r.decoding.max_new_tokens for r in reqs)
        return original(self, reqs, *a, **k)

    monkeypatch.setattr(TextModel, "generate", spy)
    for preset in ("fedllm", "fedllm-bench"):
        settings = EvalSettings(metrics=["ref_judge"], options={"ref_judge": {"testset": str(testset), "preset": preset}},
                                judge=judge_mod.JudgeConfig(model="scripted", output="text"), redo=True)
        [row] = run_evaluation(resolve_targets([str(tiny_run)], out_root=tmp_path / preset), settings)
        assert row["ref_judge"] == 7.0 and row["_metrics"]["ref_judge"]["summary"]["preset"] == preset
    ours, theirs = calls
    assert (ours["temperature"], theirs["temperature"], theirs["max_tokens"]) == (0.0, 0.2, 2048)
    assert theirs["messages"][0]["content"] == "You are a helpful assistant, that rates models by the quality of their answers."
    user = theirs["messages"][1]["content"]
    assert user.startswith("[Instruction]\nPlease act as an impartial judge") and user.endswith("[Reference]\nLima.")
    assert budgets == [256, 1024]


def test_growing_kv_layer_holds_what_concatenation_would():
    """The decoding cache appends in place (doubling its buffers) instead of re-copying the cache per token:
    its keys and values equal torch.cat's at every step, and dropping rows keeps the right ones."""
    from fedllm.eval.kv_cache import GrowingLayer

    torch.manual_seed(0)
    layer, ks, vs = GrowingLayer(capacity=0), [], []
    for n in (5, 1, 1, 3, 1, 1, 1):  # a prompt, then tokens: the buffers grow past their capacity twice
        k, v = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        ks.append(k), vs.append(v)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, torch.cat(ks, dim=-2)) and torch.equal(got_v, torch.cat(vs, dim=-2))
    assert layer.get_seq_length() == 13 and layer._k.shape[-2] >= 13
    layer.batch_select_indices(torch.tensor([0, 2]))  # in place: row 2 moves up over row 1
    assert torch.equal(layer.keys, torch.cat(ks, dim=-2)[[0, 2]]) and torch.equal(layer.values, torch.cat(vs, dim=-2)[[0, 2]])
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    got_k, got_v = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([torch.cat(ks, dim=-2)[[0, 2]], k], dim=-2))
    assert torch.equal(got_v, torch.cat([torch.cat(vs, dim=-2)[[0, 2]], v], dim=-2))
    before_k = layer.keys.clone()
    layer.batch_select_indices(torch.tensor([1, 0]))  # a reordering is indexed
    assert torch.equal(layer.keys, before_k[[1, 0]])


def test_a_stacked_kv_layer_is_the_left_padded_concatenation():
    """Rows joining a batch: both caches land in one layer, each right-aligned behind zeros, as
    left-padding and concatenating them would give, with room to grow."""
    from fedllm.eval.kv_cache import GrowingLayer

    torch.manual_seed(0)
    a = (torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4))
    b = (torch.randn(2, 2, 9, 4), torch.randn(2, 2, 9, 4))
    keep_b = torch.tensor([[0, 1, 2, 4, 5, 6, 8], [2, 3, 4, 5, 6, 7, 8]])  # gaps: rejected drafts' positions
    layer = GrowingLayer.stacked([(*a, None), (*b, keep_b)], width=7, capacity=12)
    for got, ta, tb in ((layer.keys, a[0], b[0]), (layer.values, a[1], b[1])):
        packed_b = torch.stack([tb[i][:, keep_b[i]] for i in range(2)])
        assert torch.equal(got, torch.cat([torch.cat([ta.new_zeros(3, 2, 2, 4), ta], dim=2), packed_b]))
    assert layer.get_seq_length() == 7 and layer._k.shape[-2] == 12
    k, v = torch.randn(5, 2, 1, 4), torch.randn(5, 2, 1, 4)
    got_k, _ = layer.update(k, v)
    assert got_k.shape == (5, 2, 8, 4) and torch.equal(got_k[:, :, -1:], k) and layer._k.shape[-2] == 12
    stored = GrowingLayer.stacked([(*a, None), (*b, keep_b)], width=7, capacity=12, dtype=torch.bfloat16)
    assert stored.keys.dtype == torch.bfloat16  # fp32 caches joining a bf16-stored batch are stored in bf16
    assert torch.equal(stored.keys, GrowingLayer.stacked([(*a, None), (*b, keep_b)], width=7, capacity=12).keys.bfloat16())


def test_generation_is_the_same_with_transformers_own_cache(tiny_lm, monkeypatch):
    from fedllm.eval import generation

    d = Decoding(temperature=0.0, max_new_tokens=24)
    reqs = [GenRequest(str(i), p, d) for i, p in enumerate(_prompts(tiny_lm))]
    ours = tiny_lm.generate(reqs, batch_size=4)
    monkeypatch.setattr(generation, "growing_cache", lambda *a: None)  # the model's DynamicCache
    assert tiny_lm.generate(reqs, batch_size=4) == ours


def test_waiting_requests_take_the_places_of_finished_rows(tiny_lm, monkeypatch):
    """Continuous batching: when a row ends, a waiting request is prefilled and joins the running batch
    (its cache left-padded); every answer, greedy or sampled, is still the one its prompt gets alone."""
    p = _prompts(tiny_lm) * 2
    full = [tiny_lm.generate([GenRequest(str(i), q, Decoding(max_new_tokens=20))])[0] for i, q in enumerate(p)]
    stops = tuple(f[3 + i: 5 + i] for i, f in enumerate(full) if len(f) > 10)
    reqs = [GenRequest(str(i), q, Decoding(temperature=0.0 if i % 2 else 0.8, max_new_tokens=20, stop=stops),
                       seed=i) for i, q in enumerate(p)]
    alone = [tiny_lm.generate([r])[0] for r in reqs]
    entered, handed = [], []
    real = TextModel._prefill
    monkeypatch.setattr(TextModel, "_prefill", lambda self, b, *a: entered.append(len(b)) or real(self, b, *a))
    together = tiny_lm.generate(reqs, batch_size=3, on_done=lambda r, t: handed.append(r.key))
    assert together == alone
    assert entered[0] == 3 and len(entered) > 2 and sum(entered) == len(reqs)  # rows joined a running batch
    assert sorted(handed) == sorted(r.key for r in reqs)  # each answer handed over once, as it ended


def test_drafts_keep_only_the_tokens_greedy_decoding_would_choose(tiny_lm, monkeypatch):
    """Speculative decoding: a greedy row's draft is checked in the same forward as its next token, and
    only the tokens greedy decoding would have chosen stay (the rest masked in the cache). With drafts
    right, partly right and running past an answer's end, in batches that rows join, beside sampled
    rows and with stop strings, every answer is the one decoding a token a step gives, in fewer forwards;
    a batch that rows join drops its rejected drafts' positions first."""
    from fedllm.eval import generation

    p = _prompts(tiny_lm) * 2
    full = [tiny_lm.generate([GenRequest(str(i), q, Decoding(max_new_tokens=24))])[0] for i, q in enumerate(p)]
    stops = (full[1][12:14],)
    reqs = [GenRequest(str(i), q, Decoding(temperature=0.8 if i == 2 else 0.0, max_new_tokens=24, stop=stops), seed=i)
            for i, q in enumerate(p)]
    forwards: list[int] = []
    hook = tiny_lm.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: forwards.append(a[0].shape[1]))
    try:
        recorded = oracle_drafts(monkeypatch, {})  # no drafts: one token a step, each row's tokens recorded
        plain = tiny_lm.generate(reqs, batch_size=3)
        plain_forwards = len(forwards)
        oracle_drafts(monkeypatch, dict(recorded.seen))
        widths_packed, real_packing = [], generation._packing
        monkeypatch.setattr(generation, "_packing", lambda b: widths_packed.append(
            (b.mask.shape[1], (packing := real_packing(b))[1].shape[1])) or packing)
        drafted = tiny_lm.generate(reqs, batch_size=3)
        widths = forwards[plain_forwards:]
    finally:
        hook.remove()
    assert plain == [tiny_lm.generate([r])[0] for r in reqs]
    assert plain[1] == full[1][:12] and plain[0] == full[0]  # a stop string and an answer ending on its own
    assert drafted == plain
    assert any(after < before for before, after in widths_packed)
    assert len(widths) <= plain_forwards / 2 and 1 + tiny_lm.draft_tokens in widths  # the sampled row sets the pace


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_decode_attention_is_transformers_sdpa_bit_for_bit(dtype):
    """A few-query step with a mask (drafts checked, gaps of rejected ones) runs the query heads sharing a
    key/value head as rows of one block: the output is SDPA's over copied keys, bit for bit."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from fedllm.eval.decode_attention import grouped_sdpa

    g = torch.Generator().manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    q = torch.randn(2, 6, 4, 8, generator=g).to(dtype)
    k, v = (torch.randn(2, 2, 20, 8, generator=g).to(dtype) for _ in range(2))
    mask = (torch.rand(2, 1, 4, 20, generator=g) > 0.3) & torch.ones(4, 20, dtype=torch.bool).tril(16)
    mask[..., 0] = True
    ours, ref = grouped_sdpa(module, q, k, v, mask, scaling=0.3)[0], sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)[0]
    assert ours.shape == ref.shape == (2, 4, 6, 8) and torch.equal(ours, ref)


def test_generation_checks_drafts_with_grouped_attention_and_restores_the_model(tiny_lm, monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from fedllm.eval import decode_attention

    queries = []
    real = decode_attention.grouped_sdpa
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, decode_attention.NAME,
                        lambda m, q, *a, **kw: queries.append(q.shape[2]) or real(m, q, *a, **kw))
    reqs = [GenRequest(str(i), p, Decoding(max_new_tokens=8)) for i, p in enumerate(_prompts(tiny_lm))]
    oracle_drafts(monkeypatch, {tuple(tiny_lm.encode(r.prompt)): [5, 6, 7] for r in reqs})
    tiny_lm.generate(reqs, batch_size=4)
    assert 1 + 3 in queries and tiny_lm.model.config._attn_implementation == "sdpa"


def test_prompt_lookup_drafts_what_followed_the_latest_earlier_tail():
    from fedllm.eval.drafts import PromptLookup

    look = PromptLookup([1, 2, 3, 9, 1, 2, 3, 4, 5, 2, 3])
    assert look.draft(3) == [4, 5, 2]  # tail (1,)2,3 last seen before 4 (the 3-gram 5,2,3 is new)
    look.extend([7])
    assert look.draft(2) == []  # 3, 2-, 1-grams ending in 7 never seen before
    look.extend([1, 2])
    assert look.draft(4) == [3, 4, 5, 2]  # tail 7,1,2 is new; 1,2 last followed by 3 at position 5
    assert PromptLookup([5]).draft(4) == [] and PromptLookup([5, 5]).draft(4) == [5]


def test_a_bf16_cache_gives_autocast_the_keys_it_would_cast(tiny_lm, monkeypatch):
    """Under bf16 autocast the KV cache holds bf16 (attention casts keys and values to it at every step
    anyway): the answers are those of a cache that keeps RoPE's fp32 keys."""
    lm = TextModel(tiny_lm.model, tiny_lm.tokenizer, Precision("bf16", torch.device("cpu")))
    reqs = [GenRequest(str(i), p, Decoding(max_new_tokens=16)) for i, p in enumerate(_prompts(lm))]
    stored = lm.generate(reqs, batch_size=4)
    monkeypatch.setattr(TextModel, "_cache_dtype", lambda self: None)
    assert lm.generate(reqs, batch_size=4) == stored


def test_a_shared_few_shot_prefix_runs_once_and_answers_do_not_change(tiny_lm, monkeypatch):
    """Prompts that share a long prefix (a few-shot block) run it once; each row's cache starts with its
    keys and values ([prefix | pad | own tokens]); greedy and sampled answers are those of each prompt alone,
    also for rows that join a running batch."""
    from fedllm.eval import generation
    from fedllm.data.formatting import prompt_text
    from fedllm.data.schema import Message

    tpl = get_template("chat", tiny_lm.tokenizer)
    shots = [m for i in range(1, 9) for m in (Message("user", f"Question: what is {i} plus {i}?"),
                                              Message("assistant", f"{i} plus {i} is {2 * i}."))]
    qs = ["Question: what is 9 plus 9?", "Question: and ten?", "Question: what is eleven plus twelve, exactly?",
          "Question: hi", "Question: what is two?"]
    reqs = [GenRequest(str(i), prompt_text([*shots, Message("user", q)], tpl),
                       Decoding(temperature=0.0 if i % 2 else 0.9, max_new_tokens=16), seed=i) for i, q in enumerate(qs)]
    shared = generation._common_prefix([tiny_lm.encode(r.prompt) for r in reqs])
    assert shared >= generation.MIN_SHARED_PREFIX
    alone = [tiny_lm.generate([r])[0] for r in reqs]
    prefixes, prompt_tokens = [], []
    real_prefix = TextModel._shared_prefix
    monkeypatch.setattr(TextModel, "_shared_prefix", lambda self, rows: prefixes.append(real_prefix(self, rows)) or prefixes[-1])
    count = lambda m, args: prompt_tokens.append(args[0].numel()) if args[0].shape[1] > 1 else None  # noqa: E731
    hook = tiny_lm.model.get_input_embeddings().register_forward_pre_hook(count)
    try:
        together = tiny_lm.generate(reqs, batch_size=2)
        first_run = len(prompt_tokens)
        monkeypatch.setattr(generation, "MIN_SHARED_PREFIX", 10**9)  # the plain path: every prompt in full
        plain = tiny_lm.generate(reqs, batch_size=2)
    finally:
        hook.remove()
    assert together == alone == plain
    assert prefixes[0] is not None and len(prefixes[0].ids) == shared and prefixes[-1] is None
    with_prefix, without = prompt_tokens[:first_run], prompt_tokens[first_run:]
    assert len(with_prefix) == 1 + len(without) and with_prefix[0] == shared  # the prefix once, then the prefills
    assert sum(with_prefix) < sum(without) - 2 * shared


def test_common_prefix_leaves_every_row_a_token_of_its_own():
    from fedllm.eval.generation import _common_prefix

    rows = [[1, 2, 3], [1, 2, 3, 4]]
    assert _common_prefix(rows) == 2
    rows.append([1, 5])
    assert _common_prefix(rows) == 1
    assert _common_prefix([[7, 8]] * 2) == 1


def test_a_base_model_alone_is_frozen_so_its_weights_can_be_stored_for_inference(tiny_run):
    """Without any adapter target nothing freezes the base (peft would), so evaluation freezes it itself:
    under bf16 its linear weights are then stored in bf16 once instead of re-cast at every step."""
    from fedllm.eval.runner import load_targets_model
    from fedllm.models.stored_weights import store_for_inference

    (base,) = resolve_targets(["base"], model="tiny")
    loaded, slot = load_targets_model([base])
    assert slot is None and not any(p.requires_grad for p in loaded.model.parameters())
    assert store_for_inference(loaded.model, Precision("bf16", torch.device("cpu"))) > 0
