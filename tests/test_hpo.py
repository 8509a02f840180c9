"""`fedllm hpo`: the search space and its checks, the samplers' trials, resumption, successive halving,
the rank correlations (against hand computations) and one real tiny study end to end."""

from __future__ import annotations

import io
import itertools
from collections import Counter
import json
import math
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from fedllm.bench import hpo_runs
from fedllm.bench.hpo import HpoSettings, correlation, run_hpo
from fedllm.bench.hpo_space import parse_space
from fedllm.bench.rankcorr import average_ranks, kendall_tau, spearman
from fedllm.config import ConfigError
from fedllm.data.sources import load_dataset
from fedllm.runs import METRICS, SUMMARY
from tests.conftest import Killed, synthetic_records, tiny_config


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def base_file(tmp_path: Path, **sections) -> Path:
    """A tiny-model base configuration on a synthetic FedLLM-Bench file, as YAML."""
    data = tmp_path / "fed.json"
    data.write_text(json.dumps(synthetic_records()))
    cfg = tiny_config(tmp_path, data={"dataset": str(data)}, train={"local_steps": 1},
                      eval={"every": 0, "max_samples_per_client": 1}, **sections)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


# ---------------------------------------------------------------------- the search space
def test_space_parses_every_kind(tmp_path):
    space = parse_space({"train.lr": {"log_uniform": [1e-5, 1e-3]}, "train.local_steps": [1, 2, 4],
                         "fl.server_lr": {"uniform": [0.5, 1.5]}, "lora.r": {"int_uniform": [2, 4]},
                         "fl.algorithm": {"choice": ["fedavg", "fedprox"]},
                         "lora.target_modules": {"choice": [["q_proj"], ["q_proj", "v_proj"]]}}, tiny_config(tmp_path))
    kinds = {d.key: d.kind for d in space.dimensions}
    assert kinds == {"train.lr": "log_uniform", "train.local_steps": "choice", "fl.server_lr": "uniform",
                     "lora.r": "int_uniform", "fl.algorithm": "choice", "lora.target_modules": "choice"}
    cfg = space.apply(tiny_config(tmp_path), {"train.lr": 3e-4, "lora.target_modules": ["q_proj", "v_proj"]},
                      {"name": "007", "fl.rounds": 5})
    assert (cfg.train.lr, cfg.lora.target_modules, cfg.name, cfg.fl.rounds) == (3e-4, ["q_proj", "v_proj"], "007", 5)
    with pytest.raises(ConfigError, match="train.lr, fl.server_lr are real ranges"):
        space.grid()


def test_space_rejects_bad_keys_one_line_each(tmp_path):
    bad = {"train.lrr": {"uniform": [0.1, 0.2]},  # unknown key
           "train.lr": {"uniform": [-1.0, 1.0]},  # a value the schema refuses
           "fl.rounds": [1, 2],  # the fidelity
           "lora": {"choice": [1, 2]},  # a section
           "fl.algorithm": ["fedavg", "fedsgd"],  # unknown algorithm
           "train.batch_size": {"normal": [1, 2]},  # unknown kind
           "fl.mu": {"log_uniform": [0.0, 1.0]}}  # log of zero
    with pytest.raises(ConfigError) as e:
        parse_space(bad, tiny_config(tmp_path))
    lines = str(e.value).splitlines()
    assert lines[0] == "search space <space>: 7 problem(s)"
    body = lines[1:]
    assert len(body) == 7
    for key, words in [("train.lrr", "unknown key"), ("train.lr", "greater than 0"), ("fl.rounds", "--rounds"),
                       ("lora", "names a section"), ("fl.algorithm", "fedsgd"), ("train.batch_size", "expected one of"),
                       ("fl.mu", "0 < low")]:
        assert sum(line.strip().startswith(key + ":") or line.strip().startswith(key + "=") for line in body) == 1, key
        assert any(key in line and words in line for line in body), (key, body)


def test_space_file_errors(tmp_path):
    base = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        parse_space(tmp_path / "nope.yaml", base)
    (tmp_path / "s.yaml").write_text("- train.lr\n")
    with pytest.raises(ConfigError, match="mapping of dotted config keys"):
        parse_space(tmp_path / "s.yaml", base)


# ---------------------------------------------------------------------- the study, without training
class FakeTrainer:
    """Stands in for training: a run's validation loss per round is a function of its config."""

    runs: list[str] = []

    def __init__(self, reporter) -> None:
        pass

    def run(self, cfg, dataset, on_eval=None):
        FakeTrainer.runs.append(str(cfg.run_dir))
        loss = 10 * cfg.train.lr + 0.1 * cfg.train.local_steps
        for r in range(1, cfg.fl.rounds + 1):
            if on_eval and (cfg.eval.every and r % cfg.eval.every == 0 or r == cfg.fl.rounds):
                on_eval(r, {"pooled_loss": loss / r})
        return {"final_eval": {"pooled_loss": loss / cfg.fl.rounds}}, True

    def release(self) -> None:
        pass


SPACE = {"train.lr": {"choice": [0.001, 0.002, 0.003]}, "train.local_steps": {"choice": [1, 2]}}


@pytest.fixture
def fake(monkeypatch):
    FakeTrainer.runs = []
    monkeypatch.setattr("fedllm.bench.hpo.Trainer", FakeTrainer)
    return FakeTrainer


def test_grid_enumerates_exactly_the_grid(tmp_path, fake):
    res = run_hpo(base_file(tmp_path), SPACE, tmp_path / "s", [], quiet(),
                  HpoSettings(sampler="grid", trials=50, rounds=1, final_rounds=0))
    points = [(t["params"]["train.lr"], t["params"]["train.local_steps"]) for t in res["trials"]]
    assert sorted(points) == sorted(itertools.product([0.001, 0.002, 0.003], [1, 2]))  # each once, nothing else
    assert [t["trial"] for t in res["trials"]] == list(range(6))
    assert len(fake.runs) == 6


def test_interrupted_study_resumes_as_if_never_stopped(tmp_path, fake, monkeypatch):
    space = {"train.lr": {"log_uniform": [1e-4, 1e-2]}, "train.local_steps": {"int_uniform": [1, 4]}}
    settings = HpoSettings(sampler="tpe", trials=5, rounds=1, final_rounds=0, seed=3)
    whole = run_hpo(base_file(tmp_path), space, tmp_path / "whole", [], quiet(), settings)

    calls = {"n": 0}
    original = FakeTrainer.run

    def dies_in_third(self, cfg, dataset, on_eval=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed()
        return original(self, cfg, dataset, on_eval)

    monkeypatch.setattr(FakeTrainer, "run", dies_in_third)
    with pytest.raises(Killed):
        run_hpo(base_file(tmp_path), space, tmp_path / "cut", [], quiet(), settings)
    monkeypatch.setattr(FakeTrainer, "run", original)
    fake.runs = []
    resumed = run_hpo(base_file(tmp_path), space, tmp_path / "cut", [], quiet(), settings)
    assert [Path(r).name for r in fake.runs] == ["002", "003", "004"]  # 000, 001 reused; 002 continued
    assert [t["params"] for t in resumed["trials"]] == [t["params"] for t in whole["trials"]]
    assert [t["val_loss"] for t in resumed["trials"]] == [t["val_loss"] for t in whole["trials"]]


def test_changed_settings_are_refused(tmp_path, fake):
    run_hpo(base_file(tmp_path), SPACE, tmp_path / "s", [], quiet(), HpoSettings(sampler="random", trials=1, rounds=1,
                                                                                final_rounds=0))
    with pytest.raises(ConfigError, match=r"--rounds: 1 -> 2.*train.lr: 0.005 -> 0.01"):
        run_hpo(base_file(tmp_path), SPACE, tmp_path / "s", ["train.lr=0.01"], quiet(),
                HpoSettings(sampler="random", trials=1, rounds=2, final_rounds=0))


def test_successive_halving_prunes_on_round_losses(tmp_path, fake):
    res = run_hpo(base_file(tmp_path), SPACE, tmp_path / "s", [], quiet(),
                  HpoSettings(sampler="grid", rounds=4, final_rounds=0, pruner="halving", eta=2))
    pruned = [t for t in res["trials"] if t["state"] == "pruned"]
    complete = [t for t in res["trials"] if t["state"] == "complete"]
    assert pruned and complete
    for t in pruned:  # stopped at a rung, worse there than a trial that ran before it
        step = t["pruned_after"]
        assert step in (1, 2) and list(t["intermediate"]) == [str(s) for s in range(1, step + 1)]
        earlier = [c for c in res["trials"] if c["trial"] < t["trial"] and str(step) in c["intermediate"]]
        assert any(c["intermediate"][str(step)] < t["intermediate"][str(step)] for c in earlier)
    assert all(list(t["intermediate"]) == ["1", "2", "3", "4"] for t in complete)


# ---------------------------------------------------------------------- rank correlation
def test_rank_correlations_match_hand_computation():
    # no ties: d = (-1, 1, -1, 1, 0), Σd² = 4, ρ = 1 − 6·4 / (5·24) = 0.8; discordant pairs (1,2), (3,4): τ = (8 − 2)/10
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    # a tie in x: ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): ρ = 4.5/√(4.5·5) = 3/√10; τ-b = 5/√(5·6)
    assert average_ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(5 / math.sqrt(30))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1) and kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and kendall_tau([1, 1, 1], [1, 2, 3]) is None
    # a higher-is-better final metric is turned round: the best on both sides first
    assert correlation([0.1, 0.2, 0.3], [90.0, 50.0, 10.0], lower_is_better=False)["spearman"] == pytest.approx(1)
    assert correlation([0.1], [0.2], lower_is_better=True) == {"n": 1, "spearman": None, "kendall": None}


def test_rank_correlations_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    xs, ys = [3.1, 1.2, 1.2, 5.0, 4.4, 0.3], [2.0, 1.0, 3.0, 3.0, 6.0, 0.5]
    assert spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys).statistic)
    assert kendall_tau(xs, ys) == pytest.approx(stats.kendalltau(xs, ys).statistic)


# ---------------------------------------------------------------------- a real tiny study
def test_tiny_study_end_to_end_then_reused(tmp_path, monkeypatch):
    out = tmp_path / "study"
    settings = HpoSettings(sampler="random", trials=3, rounds=1, final_rounds=2, top=2, seed=1)
    space = {"train.lr": {"log_uniform": [1e-3, 2e-2]}}
    res = run_hpo(base_file(tmp_path), space, out, [], quiet(), settings, quiet=True)
    trials = sorted((out / "trials").iterdir())
    assert [p.name for p in trials] == ["000", "001", "002"]
    for t, row in zip(trials, res["trials"]):
        assert (t / SUMMARY).is_file()
        summary = json.loads((t / SUMMARY).read_text())
        assert summary["rounds"] == 1 and summary["final_eval"]["pooled_loss"] == pytest.approx(row["val_loss"])
        assert yaml.safe_load((t / "config.yaml").read_text())["train"]["lr"] == pytest.approx(row["params"]["train.lr"])
    finals = sorted((out / "final-r2").iterdir())
    best_two = sorted(res["trials"], key=lambda r: r["val_loss"])[:2]
    assert sorted(p.name for p in finals) == sorted(f"{r['trial']:03d}" for r in best_two)
    for r in best_two:
        s = json.loads((out / "final-r2" / f"{r['trial']:03d}" / SUMMARY).read_text())
        assert s["rounds"] == 2 and s["final_eval"]["pooled_loss"] == pytest.approx(r["final"])
    assert res["correlation"]["n"] == 2 and abs(res["correlation"]["spearman"]) == pytest.approx(1)
    md = (out / "table.md").read_text()
    assert md.startswith("| trial | train.lr | status | val_loss@1 | rank | heldout_loss@2 | final rank |")
    assert "Spearman ρ" in md and len((out / "table.csv").read_text().splitlines()) == 4
    assert json.loads((out / "results.json").read_text())["correlation"] == res["correlation"]

    # the validation set is carved out of each client's training samples; the test split stays the final metric's
    fed = load_dataset(str(tmp_path / "fed.json"), test_fraction=0.1, seed=0)
    search, final = hpo_runs.validation_split(fed, 0.1, 0)
    for cid in fed:
        assert search[cid].train == final[cid].train and final[cid].test == fed[cid].test
        assert len(search[cid].test) == max(1, round(0.1 * len(fed[cid].train)))
        assert Counter(map(repr, search[cid].train + search[cid].test)) == Counter(map(repr, fed[cid].train))

    # the same command again: nothing trains, every number is read back
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob(METRICS)}

    def no_training(*a, **k):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr("fedllm.engine.simulation.Simulation.run", no_training)
    again = run_hpo(base_file(tmp_path), space, out, [], quiet(), settings, quiet=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob(METRICS)} == stamps
    assert again["trials"] == res["trials"] and again["correlation"] == res["correlation"]


def test_killed_trial_resumes_its_run(tmp_path, monkeypatch):
    """A trial killed in its second round continues from its round-1 checkpoint, not from scratch."""
    from fedllm.engine.transport import InProcessTransport

    out = tmp_path / "study"
    settings = HpoSettings(sampler="random", trials=1, rounds=2, final_rounds=0)
    space = {"train.lr": {"choice": [0.005]}}
    original = InProcessTransport.run

    def dying(self, instructions):
        for ins in instructions:
            if ins.round == 1:
                raise Killed()
            yield from original(self, [ins])

    with monkeypatch.context() as m:
        m.setattr(InProcessTransport, "run", dying)
        with pytest.raises(Killed):
            run_hpo(base_file(tmp_path), space, out, [], quiet(), settings, quiet=True)
    run = out / "trials" / "000"
    setup = (run / METRICS).read_text().splitlines()[0]
    assert (run / "checkpoints" / "round-1").is_dir() and not (run / SUMMARY).exists()
    res = run_hpo(base_file(tmp_path), space, out, [], quiet(), settings, quiet=True)
    assert (run / METRICS).read_text().splitlines()[0] == setup  # resumed: the first setup event stands
    assert res["trials"][0]["state"] == "complete" and res["trials"][0]["run_dir"] == str(run)


def test_cli_bad_space_is_one_clear_error(tmp_path):
    from typer.testing import CliRunner

    from fedllm.cli import app

    (tmp_path / "space.yaml").write_text("train.lrr: {uniform: [0.1, 0.2]}\n")
    result = CliRunner().invoke(app, ["hpo", "--space", str(tmp_path / "space.yaml"), "--config", str(base_file(tmp_path)),
                                      "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "train.lrr: unknown key" in result.output and "Traceback" not in result.output
    (tmp_path / "space.yaml").write_text("train.lr: {uniform: [0.1, 0.2]}\n")
    result = CliRunner().invoke(app, ["hpo", "--space", str(tmp_path / "space.yaml"), "--config", str(base_file(tmp_path)),
                                      "--sampler", "cmaes", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "unknown hpo sampler 'cmaes'; known: grid, random, tpe" in result.output
