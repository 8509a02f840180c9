"""Dataset analysis (`fedllm data stats`): Table 1 numbers, IFD, preferences, caching, root verbs,
embeddings and the command, on tiny synthetic federations with the tiny model."""

from __future__ import annotations

import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fedllm.cli import app
from fedllm.config import build_config
from fedllm.data.formatting import collate, encode_sft, get_template
from fedllm.data.schema import ClientData, FederatedDataset, InstructionSample, Message, PreferenceSample
from fedllm.models.loading import load_base_model
from fedllm.stats import StatsOptions, analyze, from_dataset, from_file
from fedllm.stats.embeddings import choose_clients, embed_clients
from fedllm.stats.ifd import compute_ifd, row_loss_sums
from fedllm.stats.verbs import SKIP_MESSAGE
from fedllm.train.objectives import token_loss_sum

from .conftest import synthetic_federation

PNG = b"\x89PNG\r\n\x1a\n"
QUICK = dict(ifd=False, embeddings=False, root_verbs=False)


@pytest.fixture(scope="module")
def base():
    return load_base_model(build_config({"model": {"name": "tiny"}}).model)


def _fed(clients: dict[str, list], name: str = "t") -> FederatedDataset:
    return FederatedDataset.from_clients(name, [ClientData(cid, train=s) for cid, s in clients.items()])


def _single(pairs):
    return [InstructionSample.single_turn(q, a) for q, a in pairs]


def _fake_embedder(texts):
    """Deterministic vectors: a client's texts share their first words, so they land together."""
    out = []
    for t in texts:
        rng = np.random.default_rng(sum(map(ord, t.split()[0])))
        out.append(rng.normal(size=16) + 0.01 * len(t))
    return np.asarray(out)


_fake_embedder.name = "fake-embedder"


def _ntok(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_table1_row_by_hand(tmp_path, base):
    pairs = {
        "a": [("Repeat alpha.", "alpha alpha"), ("Spell golf.", "g o l f")],
        "b": [("Name a fruit.", "apple"), ("Say hello to the world.", "Hello, world!"), ("Count to three.", "1 2 3")],
        "c": [("What is the capital of France?", "Paris is the capital of France.")] * 5,
    }
    stats = analyze(_fed({c: _single(p) for c, p in pairs.items()}), tmp_path / "out", base,
                    options=StatsOptions(**QUICK), cache_dir=tmp_path / "cache")
    t = stats["table1"]
    assert (t["clients"], t["total_samples"]) == (3, 10)
    assert t["samples_per_client"]["mean"] == pytest.approx(10 / 3)
    assert t["samples_per_client"]["std"] == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 3))  # population std
    tok = base.tokenizer
    for field, k in (("instruction_tokens", 0), ("response_tokens", 1)):
        means = [np.mean([_ntok(tok, p[k]) for p in client]) for client in pairs.values()]
        assert t[field]["mean"] == pytest.approx(np.mean(means))
        assert t[field]["std"] == pytest.approx(np.std(means))
    assert t["ifd"] is None
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| t | 3 | 10 | 3.3 ± 1.2 |" in card


def _direct_ifd(base, q: str, a: str) -> float:
    """IFD from token_loss_sum on batches of one, encoded independently with encode_sft."""
    template = get_template("chat", base.tokenizer)
    losses = []
    for instruction in (q, ""):
        feat = encode_sft(InstructionSample.single_turn(instruction, a), template, base.tokenizer, 1024)
        batch = collate([feat], base.tokenizer.pad_token_id)
        with torch.no_grad():
            loss_sum, count = token_loss_sum(base.model, batch)
        losses.append(float(loss_sum) / count)
    return losses[0] / losses[1]


def test_ifd_is_the_ratio_of_two_token_losses(tmp_path, base):
    pairs = [("Spell golf.", "g o l f"), ("Write a Python function that returns the sum of a list of numbers.",
             "def total(xs):\n    return sum(xs)"), ("Why is the sky blue?", "Sunlight is scattered by the air.")]
    fed = from_dataset(_fed({"u": _single(pairs)}))
    result = compute_ifd(fed, base.model, base.tokenizer, get_template("chat", base.tokenizer), model_id="tiny",
                         max_samples_per_client=3, cache_dir=tmp_path)  # 6 rows in padded batches
    assert result.per_client["u"]["indices"] == [0, 1, 2]
    got = result.per_client["u"]["response"]
    assert got == pytest.approx([_direct_ifd(base, q, a) for q, a in pairs], rel=1e-4)


def test_preference_length_and_quality_preference(tmp_path, base):
    tok = base.tokenizer
    pairs = [("Say hi", "Hello there, my good friend!", "hi"), ("Count", "1", "one two three four five"),
             ("Name a colour", "blue", "blue")]  # chosen longer, shorter, tie (not longer)
    samples = [PreferenceSample((Message("user", p),), c, r) for p, c, r in pairs]
    stats = analyze(_fed({"p": samples}), tmp_path / "out", base, options=StatsOptions(embeddings=False, root_verbs=False),
                    cache_dir=tmp_path / "cache")
    client = stats["clients"][0]
    longer = [_ntok(tok, c) > _ntok(tok, r) for _, c, r in pairs]
    assert longer == [True, False, False]
    assert client["length_preference"] == pytest.approx(1 / 3)
    ifd = client["ifd"]
    assert client["quality_preference"] == pytest.approx(np.mean(np.subtract(ifd["chosen"], ifd["rejected"])))
    assert ifd["rejected"][2] == pytest.approx(ifd["chosen"][2])  # identical replies, identical IFD
    assert (tmp_path / "out" / "preference.png").read_bytes().startswith(PNG)


def test_cache_makes_second_call_free_and_resumes(tmp_path, base):
    fed = from_dataset(_fed({f"c{c}": _single([(f"Repeat word {c}{i}.", f"word {c}{i}") for i in range(5)])
                             for c in range(3)}))
    template = get_template("chat", base.tokenizer)
    rows = []

    def counting(model, batch):
        rows.append(batch["input_ids"].shape[0])
        return row_loss_sums(model, batch)

    run = lambda: compute_ifd(fed, base.model, base.tokenizer, template, model_id="tiny",  # noqa: E731
                              max_samples_per_client=3, cache_dir=tmp_path, loss_fn=counting)
    first = run()
    assert first.computed == 9 and sum(rows) == 18  # 3 clients x 3 samples, 2 renderings each
    rows.clear()
    second = run()
    assert rows == [] and second.computed == 0 and second.cached == 9
    assert second.per_client == first.per_client
    # An interrupted run: the last result lost and half a line written; the next run redoes only that one.
    path = tmp_path / first.cache_file.split("/")[-1]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    third = run()
    assert third.computed == 1 and sum(rows) == 2
    for cid, entry in first.per_client.items():
        assert third.per_client[cid]["response"] == pytest.approx(entry["response"])


def test_root_verbs_fallback_without_spacy(tmp_path, base, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    buf = io.StringIO()
    stats = analyze(synthetic_federation(), tmp_path / "out", base, options=StatsOptions(ifd=False, embeddings=False),
                    cache_dir=tmp_path, console=Console(file=buf, width=300))
    assert SKIP_MESSAGE in buf.getvalue()
    assert stats["root_verbs"]["skipped"] == SKIP_MESSAGE
    assert SKIP_MESSAGE in (tmp_path / "out" / "README.md").read_text()
    assert "root_verbs" not in stats["figures"]


def test_root_verbs_with_injected_parser(tmp_path, base):
    seen = []

    def parser(texts):
        seen.extend(texts)
        return [t.split()[0].lower() for t in texts]

    stats = analyze(synthetic_federation(), tmp_path / "out", base, options=StatsOptions(ifd=False, embeddings=False),
                    cache_dir=tmp_path, verb_parser=parser)
    top = {c["id"]: c["top_verbs"] for c in stats["clients"]}
    assert top["user0"][0][0] == "repeat" and top["user1"][0][0] == "spell"
    assert top["user0"][0][1] == 12  # all samples, train + test
    assert (tmp_path / "out" / "root_verbs.png").read_bytes().startswith(PNG)
    assert "repeat (" in (tmp_path / "out" / "README.md").read_text()


def test_embeddings_tsne_with_fake_embedder(tmp_path, base):
    fed = from_dataset(synthetic_federation(num_clients=12, per_client=2, test_per_client=0))
    chosen = choose_clients(fed, 10, seed=0)
    assert len(chosen) == 10 and chosen == choose_clients(fed, 10, seed=0) != choose_clients(fed, 10, seed=1)
    vectors, owners = embed_clients(fed, _fake_embedder, per_client=2, cache_dir=tmp_path)
    assert vectors.shape == (len(owners), 16) and set(owners) == set(chosen)
    stats = analyze(fed, tmp_path / "out", base, options=StatsOptions(ifd=False, root_verbs=False, embed_per_client=2),
                    cache_dir=tmp_path, embedder=_fake_embedder)
    e = stats["embeddings"]
    assert e["computed"] and e["clients"] == chosen and e["embedder"] == "fake-embedder"
    assert e["perplexity"] < e["points"]
    assert (tmp_path / "out" / "embeddings_tsne.png").read_bytes().startswith(PNG)


def test_empty_client_and_languages_are_reported(tmp_path, base):
    clients = [ClientData("full", train=_single([("Spell golf.", "g o l f")] * 3), meta={"language": "en"}),
               ClientData("empty", train=[], meta={"languages": {"fr": 2}})]
    stats = analyze(FederatedDataset.from_clients("e", clients), tmp_path / "out", base,
                    options=StatsOptions(embeddings=False, root_verbs=False, max_samples_per_client=2),
                    cache_dir=tmp_path)
    t = stats["table1"]
    assert (t["clients"], t["total_samples"], t["samples_per_client"]["mean"]) == (2, 3, 1.5)
    assert t["instruction_tokens"]["n"] == 1 and t["ifd"]["n"] == 1  # means over clients with samples
    assert any("'empty' has 0 samples" in p for p in stats["problems"])
    assert "languages" in stats["figures"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Problems found in the data" in card and "'empty' has 0 samples" in card


def test_bad_file_is_read_leniently_with_problems(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"ok": [{"instruction": "a", "response": "b"}, {"instruction": "c"}], "none": []}))
    (tmp_path / "manifest.json").write_text(json.dumps({"clients": {"ok": {"languages": {"en": 1}}}}))
    fed = from_file(path)
    assert {c: len(s) for c, s in fed.clients.items()} == {"ok": 1, "none": 0}
    assert any("missing field 'response'" in p for p in fed.problems)
    assert any("'none' has 0 samples" in p for p in fed.problems)
    assert fed.languages == {"ok": {"en": 1}} and "manifest.json" in fed.language_source


def test_cli_data_stats_writes_card_json_and_pngs(tmp_path, bench_file, monkeypatch):
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "stats"
    args = ["data", "stats", str(bench_file), "--model", "tiny", "--out", str(out), "--max-samples-per-client", "2",
            "--no-embeddings"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["table1"]["clients"] == 4 and stats["table1"]["total_samples"] == 12 + 15 + 18 + 21
    assert stats["ifd"]["replies_scored_now"] > 0
    assert "# fed: dataset card" in (out / "README.md").read_text()
    for name in ("quantity.png", "lengths.png", "ifd.png"):
        assert (out / name).read_bytes().startswith(PNG), name
    assert "IFD (client means)" in res.output
    res = CliRunner().invoke(app, args)  # second run: all IFD from the cache
    assert res.exit_code == 0 and json.loads((out / "stats.json").read_text())["ifd"]["replies_scored_now"] == 0


def test_truncated_to_nothing_counts_samples_without_a_response_token(tmp_path, base):
    long_q = "Explain " + "very " * 40 + "carefully."
    clients = {"a": _single([("Hi", "Hello"), (long_q, "ok"), (long_q, "sure")]),
               "b": _single([("Hi", "Hello there")] * 2),
               "p": [PreferenceSample((Message("user", long_q),), "yes", "no")]}  # DPO cuts the prompt first
    max_length = 48
    template = get_template("chat", base.tokenizer)

    def first_response_token(sample):
        labels = encode_sft(sample, template, base.tokenizer, 4096)["labels"]
        return next(i for i, label in enumerate(labels) if label != -100)

    assert [first_response_token(s) < max_length for s in clients["a"] + clients["b"]] == [True, False, False, True, True]
    stats = analyze(_fed(clients), tmp_path / "out", base, options=StatsOptions(**QUICK, train_max_length=max_length),
                    cache_dir=tmp_path / "cache")
    expected = {"max_length": 48, "template": "chat", "total": 2, "share": pytest.approx(2 / 6), "per_client": {"a": 2}}
    assert stats["truncated_to_nothing"] == expected
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["truncated_to_nothing"] == expected
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("At max_length 48 (`chat` template), 2 samples (33.3%) keep no response token and are dropped from "
            "training (most in: a (2)).") in card
    # Long enough for every sample: one line says so.
    stats = analyze(_fed(clients), tmp_path / "out", base, options=StatsOptions(**QUICK), cache_dir=tmp_path / "cache")
    assert stats["truncated_to_nothing"]["total"] == 0 and stats["truncated_to_nothing"]["max_length"] == 384
    assert "At max_length 384 (`chat` template), every sample keeps at least one response token." in (
        tmp_path / "out" / "README.md").read_text()


def test_cli_data_stats_max_length(tmp_path, bench_file, monkeypatch):
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "stats"
    res = CliRunner().invoke(app, ["data", "stats", str(bench_file), "--model", "tiny", "--out", str(out), "--no-ifd",
                                   "--no-embeddings", "--max-length", "20"])
    assert res.exit_code == 0, res.output
    tr = json.loads((out / "stats.json").read_text())["truncated_to_nothing"]
    assert (tr["max_length"], tr["total"]) == (20, 66)  # every prompt is longer than 20 tokens
    assert tr["per_client"] == {"user0": 12, "user1": 15, "user2": 18, "user3": 21}
    assert "no response token left at max_length 20" in res.output and "66 (100.0%)" in res.output


def test_cli_data_stats_unknown_name_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["data", "stats", "fed-pycod", "--model", "tiny", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "fed-pycode" in res.output


@pytest.mark.integration
def test_minilm_embeds_sentences():
    from fedllm.models.embedder import minilm_embedder

    embed = minilm_embedder()
    v = np.asarray(embed(["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell sharply."]))
    assert v.shape == (3, 384)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
