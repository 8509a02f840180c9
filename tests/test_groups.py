"""Grouped federations: groups by attribute, presets and mapping; one adapter per group in one run,
each group's run identical to the run of its clients alone; resume; FedSamLang/FedSimLang on Fed-Aya."""

from __future__ import annotations

import json

import pytest
import torch

from fedllm.data.groups import FAMILIES, language_family, resolve_groups
from fedllm.data.schema import DataError
from fedllm.data.sources import load_dataset
from fedllm.engine.groups import GroupedRun
from fedllm.engine.metrics import read_metrics
from fedllm.engine.progress import Reporter
from fedllm.eval.heldout import HeldoutEvaluator
from fedllm.models.adapters import load_adapter_state
from fedllm.runs import RunError
from tests.conftest import Killed, run_sim, synthetic_federation, tiny_config, write_aya_fixture, AYA_FIXTURE_LANGUAGES

MAPPING = {"user0": "a", "user1": "a", "user2": "b", "user3": "b"}


def grouped(cfg, dataset=None, resume=False):
    run = GroupedRun(cfg, dataset=dataset or synthetic_federation(), reporter=Reporter(quiet=True),
                     evaluator=lambda: HeldoutEvaluator.from_config(cfg.eval))
    return run.run(resume=resume)


def test_language_families_and_the_rule_outside_them() -> None:
    assert language_family("spanish") == "romance" and language_family("Ukrainian") == "slavic"
    assert language_family("Telugu") == "Telugu"  # outside the five: a family of its own
    assert sum(map(len, FAMILIES.values())) == 16


def test_fedsamlang_and_fedsimlang_on_a_fed_aya_build(tmp_path) -> None:
    fixture = write_aya_fixture(tmp_path / "aya.jsonl")
    ds = load_dataset("fed-aya", cache_dir=tmp_path / "cache", data_files=[str(fixture)], min_samples=5, progress=False,
                      languages=AYA_FIXTURE_LANGUAGES)
    ids = list(ds.client_ids)
    same, lang = resolve_groups(ds, ids, "fedsamlang")
    assert lang["u_en"] == "English"  # 8 English rows and 2 French: the majority language
    assert sorted(same) == ["English", "French", "German", "Russian", "Simplified Chinese", "Spanish", "Telugu"]
    assert sorted(same["English"]) == ["u_en", "u_en2"]
    sim, _ = resolve_groups(ds, ids, "fedsimlang")
    assert sorted(sim) == ["Telugu", "east-asian", "germanic", "romance", "slavic"]
    assert sorted(sim["germanic"]) == ["u_de", "u_en", "u_en2"] and sorted(sim["romance"]) == ["u_es", "u_fr"]
    custom, _ = resolve_groups(ds, ids, "fedsimlang", families={"indo-european": ["English", "German", "Russian"]})
    assert sorted(custom["indo-european"]) == ["u_de", "u_en", "u_en2", "u_ru"] and custom["French"] == ["u_fr"]
    with pytest.raises(DataError, match="have no attribute 'category'.*language"):
        resolve_groups(ds, ids, "category")


def test_grouping_a_fedllm_bench_file_by_a_record_field(tmp_path) -> None:
    records = {"u1": [{"instruction": "q", "response": "a", "category": "qa"}] * 3,
               "u2": [{"instruction": "q", "response": "a", "category": "code"}] * 2 + [{"instruction": "q", "response": "a"}]}
    path = tmp_path / "fed.json"
    path.write_text(json.dumps(records))
    groups, _ = resolve_groups(load_dataset(path), ["u1", "u2"], "category")
    assert groups == {"qa": ["u1"], "code": ["u2"]}


def test_mapping_must_cover_every_client(tmp_path) -> None:
    with pytest.raises(DataError, match=r"no group for 2 client\(s\)"):
        resolve_groups(synthetic_federation(), ["user0", "user1", "user2", "user3"],
                       mapping={"user0": "a", "user1": "a"})
    path = tmp_path / "m.yaml"
    path.write_text("user0: a\nuser1: b\n")
    assert resolve_groups(synthetic_federation(), ["user0", "user1"], mapping=str(path))[0] == {"a": ["user0"], "b": ["user1"]}


def test_each_group_trains_its_own_adapter_as_its_clients_alone_would(tmp_path) -> None:
    common = {"fl": {"rounds": 2}, "train": {"local_steps": 2, "lr": 3e-2}}
    cfg = tiny_config(tmp_path / "g", groups={"mapping": MAPPING}, **common)
    summary = grouped(cfg)
    plan = json.loads((cfg.run_dir / "groups.json").read_text())
    assert {n: g["clients"] for n, g in plan["groups"].items()} == {"a": ["user0", "user1"], "b": ["user2", "user3"]}
    a = load_adapter_state(cfg.run_dir / "groups" / "a" / "adapter")
    b = load_adapter_state(cfg.run_dir / "groups" / "b" / "adapter")
    assert not all(torch.equal(a[k], b[k]) for k in a)
    for name, adapter in (("a", a), ("b", b)):  # a group's run is the run of its clients alone
        alone, _ = run_sim(tiny_config(tmp_path / f"alone-{name}", data={"clients": plan["groups"][name]["clients"]},
                                       **common))
        full = alone.slot.full(alone.final_state)
        assert all(torch.equal(adapter[k], full[k]) for k in adapter)
        events = read_metrics(cfg.run_dir / "groups" / name / "metrics.jsonl")
        assert {e["client"] for e in events if e["event"] == "client"} <= set(plan["groups"][name]["clients"])
    assert set(summary["per_client"]) == set(MAPPING)
    assert {c: r["group"] for c, r in summary["per_client"].items()} == MAPPING
    assert summary["fairness"]["global"]["clients"] == 4
    import math

    assert summary["final_eval"]["pooled_ppl"] == pytest.approx(math.exp(summary["final_eval"]["pooled_loss"]))
    assert summary["cost"]["client_rounds"] == 2 * 2 * 2  # two groups, two rounds, two clients per round
    assert summary["final_eval"]["mean_client_loss"] == pytest.approx(
        sum(r["loss"] for r in summary["per_client"].values()) / 4)


def test_a_grouped_run_resumes_after_a_kill(tmp_path, monkeypatch) -> None:
    from fedllm.engine.transport import InProcessTransport

    common = {"fl": {"rounds": 2}, "train": {"local_steps": 2, "lr": 3e-2}, "groups": {"mapping": MAPPING}}
    whole = tiny_config(tmp_path / "whole", **common)
    grouped(whole)
    cut = tiny_config(tmp_path / "cut", **common)
    original = InProcessTransport.run

    def dying(self, instructions):
        for ins in instructions:
            if ins.client_id == "user2" and ins.round == 1:
                raise Killed()
            yield from original(self, [ins])

    with monkeypatch.context() as m:
        m.setattr(InProcessTransport, "run", dying)
        with pytest.raises(Killed):
            grouped(cut)
    assert (cut.run_dir / "groups" / "a" / "summary.json").is_file()
    assert not (cut.run_dir / "groups" / "b" / "summary.json").exists()
    with pytest.raises(RunError, match="already holds a grouped run"):
        grouped(cut)
    grouped(cut, resume=True)
    for g in ("a", "b"):
        x = load_adapter_state(whole.run_dir / "groups" / g / "adapter")
        y = load_adapter_state(cut.run_dir / "groups" / g / "adapter")
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_personalised_method_inside_groups_reports_personal_numbers(tmp_path) -> None:
    cfg = tiny_config(tmp_path, fl={"rounds": 1, "algorithm": "ditto"}, train={"local_steps": 2, "lr": 3e-2},
                      groups={"by": "client"})
    summary = grouped(cfg)
    assert len(summary["groups"]) == 4 and all(g["clients"] == 1 for g in summary["groups"].values())
    assert all("personal" in r for r in summary["per_client"].values())
    assert summary["fairness"]["personal"]["clients"] == 4


def test_unknown_data_clients_are_named(tmp_path) -> None:
    with pytest.raises(RunError, match=r"data.clients names 1 client\(s\).*'nobody'"):
        run_sim(tiny_config(tmp_path, data={"clients": ["user0", "nobody"]}))


def aya_overrides(tmp_path, fixture) -> list[str]:
    langs = ", ".join(AYA_FIXTURE_LANGUAGES)
    return ["model.name=tiny", "data.dataset=fed-aya", f"data.build={{data_files: [{fixture}], min_samples: 5, "
            f"languages: [{langs}]}}", "data.max_length=64", "fl.rounds=2", "fl.clients_per_round=2",
            "train.local_steps=2", "train.lr=3e-2", "lora.r=4", "eval.every=0"]


def test_collab_prints_table_6_from_one_command(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from fedllm.cli import app

    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "120")
    fixture = write_aya_fixture(tmp_path / "aya.jsonl")
    out = tmp_path / "collab"
    res = CliRunner().invoke(app, ["collab", "--out", str(out), *aya_overrides(tmp_path, fixture)])
    assert res.exit_code == 0, res.output
    assert "FedSamLang" in res.output and "FedSimLang" in res.output and "Telugu" in res.output
    result = json.loads((out / "results.json").read_text())
    table = result["table"]
    assert list(table) == ["Local", "FedAvg", "FedSamLang", "FedSimLang"]
    assert result["columns"] == [*AYA_FIXTURE_LANGUAGES, "avg"]
    # a language with one client federates alone under FedSamLang: exactly Local training
    for lang in ("French", "German", "Russian", "Simplified Chinese", "Spanish", "Telugu"):
        assert table["FedSamLang"][lang] == table["Local"][lang]
    # a language alone in its family (or outside every family) gets the same adapter under FedSimLang
    for lang in ("Russian", "Simplified Chinese", "Telugu"):
        assert table["FedSimLang"][lang] == table["FedSamLang"][lang]
    assert table["FedAvg"]["avg"] == pytest.approx(sum(table["FedAvg"][c] for c in AYA_FIXTURE_LANGUAGES) / 7)
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("| method | English") and len(md) == 6
    assert (out / "table.tex").read_text().count("\\\\") == 5 and (out / "table.csv").read_text().count("\n") == 5
    # a second call reuses every finished run
    again = CliRunner().invoke(app, ["collab", "--out", str(out), *aya_overrides(tmp_path, fixture)])
    assert again.exit_code == 0 and "finished earlier" in again.output
    assert json.loads((out / "results.json").read_text())["table"] == table


def test_grouped_training_from_the_cli_and_its_report(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from fedllm.cli import app

    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "120")
    fixture = write_aya_fixture(tmp_path / "aya.jsonl")
    args = ["train", f"output_dir={tmp_path / 'runs'}", "name=g", "groups.by=fedsimlang", "fl.algorithm=ditto",
            *aya_overrides(tmp_path, fixture)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "g"
    assert sorted(p.name for p in (run / "groups").iterdir()) == ["east-asian", "germanic", "romance", "slavic", "telugu"]
    rep = CliRunner().invoke(app, ["report", str(run), str(run / "groups" / "germanic")])
    assert rep.exit_code == 0, rep.output
    assert "fairness view" in rep.output and "personal (personal)" in rep.output
    bad = CliRunner().invoke(app, [*args[:2], "name=h", "groups.by=category", *args[4:]])
    assert bad.exit_code != 0 and "no attribute 'category'" in bad.output and "language" in bad.output
    assert not (tmp_path / "runs" / "h").exists()


def test_fed_dolly_clients_carry_their_category(tmp_path) -> None:
    from fedllm.data.groups import client_attribute
    from tests.test_sources_public import dolly_rows, write_csv

    ds = load_dataset("fed-dolly", cache_dir=tmp_path / "c", data_files=[str(write_csv(tmp_path / "d.csv", dolly_rows()))],
                      progress=False)
    ids = list(ds.client_ids)
    assert client_attribute(ds, ids, "category") == {c: c for c in ids} and len(ids) >= 2


def test_evaluating_a_grouped_run_evaluates_each_group(tmp_path) -> None:
    from fedllm.eval.target import resolve_targets

    cfg = tiny_config(tmp_path, fl={"rounds": 1}, train={"local_steps": 1}, groups={"mapping": MAPPING})
    grouped(cfg)
    targets = resolve_targets([str(cfg.run_dir), "base"])
    assert [t.label for t in targets[:2]] == ["a", "b"] and targets[2].kind == "base"
    assert [t.cfg.data.clients for t in targets[:2]] == [["user0", "user1"], ["user2", "user3"]]
