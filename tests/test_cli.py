"""The `fedllm` command as a user calls it: train, resume, report, config, data; readable errors."""

from __future__ import annotations

import json

import pytest
from pathlib import Path

from typer.testing import CliRunner

from fedllm.cli import app

runner = CliRunner()


def _train_args(tmp_path, bench_file, *extra):
    return ["train", "-q", f"output_dir={tmp_path / 'runs'}", "model.name=tiny", f"data.dataset={bench_file}",
            "data.max_length=64", "lora.r=4", "fl.rounds=2", "train.local_steps=2", "train.batch_size=2", *extra]


def test_train_report_and_resume(tmp_path, bench_file):
    res = runner.invoke(app, _train_args(tmp_path, bench_file, "name=a"))
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / "a"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["clients"] == 4
    res = runner.invoke(app, ["train", "-q", "--resume", str(run_dir)])  # already finished: re-saves, same result
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "summary.json").read_text())["final_eval"] == summary["final_eval"]
    res = runner.invoke(app, ["report", str(run_dir), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    assert "fedavg" in res.output and (tmp_path / "p.png").stat().st_size > 1000


def test_bad_config_value_is_a_clear_error(tmp_path, bench_file):
    res = runner.invoke(app, _train_args(tmp_path, bench_file, "fl.rounds=-1", "fl.algorithm=fedsgd", "data.template=chatml"))
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "3 problem(s)" in out and "fl.rounds" in out
    assert "unknown algorithm 'fedsgd'; known: ditto, fedadagrad, fedadam" in out
    assert "unknown template 'chatml'" in out
    assert not (tmp_path / "runs").exists()  # nothing written for an invalid config


def test_missing_dataset_file_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["train", "-q", f"output_dir={tmp_path}", "model.name=tiny", f"data.dataset={tmp_path / 'nope.json'}"])
    assert res.exit_code == 2
    assert "nope.json" in res.output


def test_a_judge_server_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    from fedllm.eval import judge_server

    monkeypatch.setattr(judge_server, "missing_server_modules", lambda: ["llama_cpp", "uvicorn"])
    gguf = tmp_path / "judge.gguf"
    gguf.write_bytes(b"GGUF")
    res = runner.invoke(app, ["eval", "base", "--model", "tiny", "--metrics", "mt_bench", "--judge-local", str(gguf),
                              "--out", str(tmp_path / "eval")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "missing: llama_cpp, uvicorn" in res.output and "pip install 'fedllm[judge-server]'" in res.output


def test_resume_of_non_run_directory(tmp_path):
    res = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_config_shows_resolved_values():
    res = runner.invoke(app, ["config", "fl.algorithm=scaffold", "lora.r=8"])
    assert res.exit_code == 0
    assert "algorithm: scaffold" in res.output and "r: 8" in res.output


def test_data_list_shows_fed_pycode():
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "fed-pycode" in res.output


def test_data_build_from_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}.\n#### {2 * i}"} for i in range(12)]
    src = tmp_path / "gsm8k_train.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = runner.invoke(app, ["data", "build", "fed-gsm8k-3", "--data-files", str(src), "--set", "num_clients=3"])
    assert res.exit_code == 0, res.output
    built = json.loads(next((tmp_path / "cache" / "datasets" / "fed-gsm8k-3").rglob("fed-gsm8k-3.json")).read_text())
    assert len(built) == 3 and sum(len(v) for v in built.values()) == 12
    res = runner.invoke(app, ["data", "build", "fed-gsm8k-3", "--set", "bogus=1"])
    assert res.exit_code == 2 and "bogus" in res.output
    res = runner.invoke(app, ["data", "build", "fed-pycode", "--data-files", str(src)])
    assert res.exit_code == 2 and "drop --data-files" in res.output


def test_data_build_prints_the_path_alone_and_unwrapped(tmp_path, monkeypatch):
    """Piped, `fedllm data build` once wrapped its path at 80 columns, so `$(… | tail -1)` gave a fragment."""
    deep = tmp_path / ("a-long-directory-name-" * 4) / "cache"
    monkeypatch.setenv("FEDLLM_CACHE", str(deep))
    monkeypatch.setenv("COLUMNS", "80")
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}.\n#### {2 * i}"} for i in range(12)]
    src = tmp_path / "gsm8k_train.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = runner.invoke(app, ["data", "build", "fed-gsm8k-3", "--data-files", str(src)])
    assert res.exit_code == 0, res.output
    path = res.stdout.strip()
    assert len(path) > 80 and "\n" not in path and Path(path).is_file() and path.endswith("fed-gsm8k-3.json")
    res = runner.invoke(app, ["data", "build", "fed-gsm8k-3", "--data-files", str(src), "--json"])
    got = json.loads(res.stdout)
    assert got["path"] == path and Path(got["manifest"]).is_file()


def test_a_build_from_local_files_is_listed_and_used_by_data_stats(tmp_path, monkeypatch):
    """After `data build NAME --data-files …`, `data list` said "built: no" and `data stats NAME` went to the hub."""
    import datasets

    from tests.conftest import AYA_FIXTURE_LANGUAGES, write_aya_fixture

    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was contacted"))
    fixture = write_aya_fixture(tmp_path / "aya.jsonl")
    langs = ", ".join(AYA_FIXTURE_LANGUAGES)
    res = runner.invoke(app, ["data", "build", "fed-aya", "--data-files", str(fixture), "--set", "min_samples=5",
                              "--set", f"languages=[{langs}]", "--set", "progress=false"])
    assert res.exit_code == 0, res.output
    built = res.stdout.strip()
    listed = runner.invoke(app, ["data", "list"], env={"COLUMNS": "300"}).output
    row = next(line for line in listed.splitlines() if "fed-aya" in line)
    assert "yes: 1 from other input or options" in row
    out = tmp_path / "stats"
    res = runner.invoke(app, ["data", "stats", "fed-aya", "--model", "tiny", "--out", str(out), "--no-ifd",
                              "--no-embeddings"])
    assert res.exit_code == 0, res.output
    assert f"using the newest build in the cache, {built}" in res.output.replace("\n", "") and str(fixture) in res.output.replace("\n", "")
    assert json.loads((out / "stats.json").read_text())["table1"]["clients"] == 8
