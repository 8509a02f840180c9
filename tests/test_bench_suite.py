"""`fedllm bench`: suites expand into cells, run in processes of their own, skip what is finished,
resume what was interrupted, and report mean ± std over seeds with a paired test against a reference."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedllm.bench.suite import SuiteError, builtin_suites, load_suite
from fedllm.bench.suite_report import Arm, compare, holm, paired_differences, seed_stats
from fedllm.bench.suite_run import ResultsStore, plan
from fedllm.cli import app

runner = CliRunner()


def _suite(tmp_path: Path, bench_file: Path, **extra) -> Path:
    spec = {
        "name": "tiny", "description": "three arms, two seeds",
        "set": {"model.name": "tiny", "data.dataset": str(bench_file), "data.max_length": 64, "lora.r": 4,
                "fl.rounds": 2, "fl.clients_per_round": 2, "train.local_steps": 2, "train.batch_size": 2,
                "eval.every": 1, "checkpoint.every": 1},
        "axes": {"method": {"fedavg": {"fl.algorithm": "fedavg"}, "local": {"fl.algorithm": "local"},
                            "central": {"fl.algorithm": "local", "fl.local_client": "pooled"}},
                 "seed": {"key": "seed", "values": [0, 1]}},
        "compare": {"method": "fedavg"},
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_suite_runs_every_cell_once_records_each_number_and_tabulates(tmp_path, bench_file, request):
    records = json.loads(bench_file.read_text())
    language = {"user0": "en", "user1": "fr", "user2": "en", "user3": "de"}
    bench_file.write_text(json.dumps({c: [{**r, "language": language[c]} for r in recs] for c, recs in records.items()}))
    path, out = _suite(tmp_path, bench_file, report_by="language"), tmp_path / "out"
    res = runner.invoke(app, ["bench", str(path), "--out", str(out), "--jobs", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    suite = load_suite(path, out)
    assert [c.id for c in suite.cells] == [f"{m}_seed{s}" for m in ("fedavg", "local", "central") for s in (0, 1)]
    rows = ResultsStore(out / "results.jsonl").rows(suite)
    held = {r["cell"]: r for r in rows if r["metric"] == "heldout"}
    assert set(held) == {c.id for c in suite.cells}
    for cell in suite.cells:
        r, summary = held[cell.id], json.loads((cell.cfg.run_dir / "summary.json").read_text())
        assert r["value"] == summary["final_eval"]["pooled_loss"] and r["seed"] == cell.cfg.seed
        assert r["config_hash"] == cell.config_hash and r["code_version"].startswith("0.") and r["threads"] == 1
        assert set(r["per_client"]) == {"user0", "user1", "user2", "user3"}
    assert json.loads((suite.cells[4].cfg.run_dir / "summary.json").read_text())["participants"] == ["pooled"]
    md = (out / "table.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(lines) == 4 and "(reference)" in lines[1] and "Δ held-out vs fedavg" in lines[0]
    mean, std = seed_stats([held["local_seed0"]["value"], held["local_seed1"]["value"]])
    assert f"{mean:.4f} ± {std:.4f}" in lines[2]
    assert (out / "table.tex").read_text().startswith("\\begin{tabular}") and (out / "table.csv").is_file()
    # per language: the mean over seeds and the language's clients of their final held-out loss, by hand
    by_lang = (out / "by-language.md").read_text().splitlines()
    assert by_lang[0] == "| arm | de (1) | en (2) | fr (1) |"
    for line, arm in zip(by_lang[2:], ("fedavg", "local", "central"), strict=True):
        per = [held[f"{arm}_seed{s}"]["per_client"] for s in (0, 1)]
        en = sum(p[c] for p in per for c in ("user0", "user2")) / 4
        assert line == f"| {arm} | {sum(p['user3'] for p in per) / 2:.4f} | {en:.4f} | {sum(p['user1'] for p in per) / 2:.4f} |"
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 3 and "Held-out loss per round" in page and "Message bytes against quality" in page
    assert "<h2>Difference from fedavg per round</h2>" in page and "minus fedavg" in page
    assert "<h2>Per language</h2>" in page and "<th class=\"r\">en (2)</th>" in page
    assert all(f"<summary>{c.id} ({c.config_hash})</summary>" in page for c in suite.cells)
    assert all(f'<td class="l">{m}</td>' in page for m in ("fedavg", "local", "central"))
    assert "<script" not in page and not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)  # self-contained
    _renders_in_chromium(request.getfixturevalue("browser"), out / "report.html", suite, tmp_path)
    (out / "report.html").rename(out / "first.html")
    res = runner.invoke(app, ["report", str(out)])  # from the suite's directory alone
    assert res.exit_code == 0, res.output
    assert (out / "report.html").read_text().count("<svg") == page.count("<svg")
    res = runner.invoke(app, ["report", str(suite.cells[0].cfg.run_dir), str(suite.cells[2].cfg.run_dir),
                              "--html", str(tmp_path / "two.html")])
    assert res.exit_code == 0, res.output
    two = (tmp_path / "two.html").read_text()
    assert "fedavg_seed0" in two and "local_seed0" in two and "<svg" in two
    # a second call finds everything finished and trains nothing
    stamp = {c.id: (c.cfg.run_dir / "summary.json").stat().st_mtime_ns for c in suite.cells}
    res = runner.invoke(app, ["bench", str(path), "--out", str(out)])
    assert res.exit_code == 0 and "6 finished before, 0 to run" in res.output
    assert stamp == {c.id: (c.cfg.run_dir / "summary.json").stat().st_mtime_ns for c in suite.cells}


def test_a_killed_suite_resumes_its_interrupted_cell_and_leaves_no_process_behind(tmp_path, bench_file):
    path = _suite(tmp_path, bench_file, axes={"seed": {"key": "seed", "values": [0]}}, compare=None)
    spec = yaml.safe_load(path.read_text())
    spec["set"].update({"fl.rounds": 40, "eval.every": 0, "eval.at_start": False})  # long enough to be cut short
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fedllm.cli", "bench", str(path), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = out / "runs" / "seed0"
    deadline = time.time() + 240
    while not list((run_dir / "checkpoints").glob("round-*")) and time.time() < deadline:
        time.sleep(0.2)
    assert list((run_dir / "checkpoints").glob("round-*")), "no checkpoint within 240 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 1.0  # a cell gets its parent-death signal at once: a second to be gone
    while True:
        left = subprocess.run(["pgrep", "-f", str(out / "cells")], capture_output=True, text=True).stdout.split()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, "a cell process outlived the killed suite"
    assert not (run_dir / "summary.json").exists()
    suite = load_suite(path, out)
    assert [s.action for s in plan(suite, ResultsStore(out / "results.jsonl"))] == ["resume"]
    res = runner.invoke(app, ["bench", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "seed0: resume (interrupted)" in res.output
    assert "--resume" in (out / "logs" / "seed0.log").read_text()
    assert [e["round"] for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if e.get("event") == "round"][-1] == 40


def test_an_edited_suite_moves_changed_cells_aside_and_reruns_only_them(tmp_path, bench_file):
    path = _suite(tmp_path, bench_file, axes={"method": {"fedavg": {}, "local": {"fl.algorithm": "local"}}},
                  compare=None)
    out = tmp_path / "out"
    assert runner.invoke(app, ["bench", str(path), "--out", str(out), "--jobs", "2", "--threads", "1"]).exit_code == 0
    spec = yaml.safe_load(path.read_text())
    spec["axes"]["method"]["local"]["train.lr"] = 1e-3
    path.write_text(yaml.safe_dump(spec))
    res = runner.invoke(app, ["bench", str(path), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0 and "done" in res.output and "replace" in res.output
    res = runner.invoke(app, ["bench", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 finished before, 1 to run" in res.output
    assert len(list((out / "runs").glob("local.replaced-*"))) == 1  # the earlier run is kept, not deleted
    rows = ResultsStore(out / "results.jsonl").rows(load_suite(path, out))
    assert len([r for r in rows if r["metric"] == "heldout"]) == 2


def test_a_grouped_cell_scores_each_groups_adapter_and_weights_groups_by_their_clients(tmp_path, bench_file):
    fixtures = Path(__file__).parent / "fixtures" / "eval"
    path = _suite(tmp_path, bench_file, compare=None, metrics=["heldout", "mmlu"],
                  eval={"data_dir": str(fixtures), "batch_size": 4},
                  axes={"method": {"fedavg": {}, "pairs": {"groups.mapping": {"user0": "a", "user1": "a", "user2": "a",
                                                                              "user3": "b"}}}})
    spec = yaml.safe_load(path.read_text())
    spec["set"].update({"fl.rounds": 1, "eval.every": 0})
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", str(path), "--out", str(out), "--jobs", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    rows = {(r["cell"], r["metric"]): r for r in ResultsStore(out / "results.jsonl").rows()}
    group_dirs = {g: out / "runs" / "pairs" / "groups" / g for g in ("a", "b")}
    own = {g: json.loads((d / "eval" / "final" / "mmlu" / "summary.json").read_text())["columns"]["mmlu"]
           for g, d in group_dirs.items()}
    pairs = rows[("pairs", "mmlu")]
    assert pairs["per_group"] == own and pairs["value"] == pytest.approx((3 * own["a"] + own["b"]) / 4)
    assert rows[("fedavg", "mmlu")]["value"] == json.loads(
        (out / "runs" / "fedavg" / "eval" / "final" / "mmlu" / "summary.json").read_text())["columns"]["mmlu"]


def test_grouped_eval_columns_by_hand(tmp_path):
    from fedllm.bench.suite_run import CellFailed, eval_columns

    run = tmp_path / "run"
    (run / "groups.json").parent.mkdir()
    (run / "groups.json").write_text(json.dumps({"groups": {"x": {"dir": "x", "clients": ["1", "2"]},
                                                            "y y": {"dir": "y-y", "clients": ["3"]}}}))
    for d, cols in (("x", {"s": 30.0, "t": 1.0, "only_x": 5.0}), ("y-y", {"s": 60.0, "t": 4.0})):
        (run / "groups" / d / "eval" / "final" / "m").mkdir(parents=True)
        (run / "groups" / d / "eval" / "final" / "m" / "summary.json").write_text(json.dumps({"columns": cols}))
    columns, per_group = eval_columns(run, "m")
    assert columns == {"s": pytest.approx(40.0), "t": pytest.approx(2.0)}  # (2·30 + 60) / 3, (2·1 + 4) / 3
    assert per_group["y y"] == {"s": 60.0, "t": 4.0} and "only_x" not in columns
    with pytest.raises(CellFailed, match="wrote no"):
        eval_columns(run, "other")


def test_a_failing_cell_is_reported_and_the_others_finish(tmp_path, bench_file):
    path = _suite(tmp_path, bench_file, axes={"method": {"fedavg": {}, "bad": {"fl.algorithm": "local",
                                                                              "fl.local_client": "nobody"}}},
                  compare=None)
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", str(path), "--out", str(out), "--jobs", "2", "--threads", "1"])
    assert res.exit_code == 1
    failures = json.loads((out / "failures.json").read_text())
    assert list(failures) == ["bad"] and "not a client id" in failures["bad"] and "logs/bad.log" in failures["bad"]
    assert (out / "runs" / "fedavg" / "summary.json").is_file()


@pytest.mark.parametrize("change, message", [
    ({"axes": {"method": {"a": "fedavg"}}}, "axes.method.a: expected dotted keys"),
    ({"axes": {"seed": [0, 1]}}, "a list needs a key"),
    ({"axes": {"seed": {"key": "seed", "values": ["a b"]}}}, "label 'a b'"),
    ({"exclude": [{"method": "nope"}]}, "exclude"),
    ({"compare": {"method": "nope"}}, "compare: method=nope is not a label"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"set": {"fl.rounds": -1}}, "fl.rounds"),
])
def test_bad_suites_are_one_clear_line(tmp_path, bench_file, change, message):
    path = _suite(tmp_path, bench_file)
    spec = yaml.safe_load(path.read_text())
    if "set" in change:
        spec["set"].update(change["set"])
    else:
        spec.update(change)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SuiteError, match=message.replace("(", r"\(")):
        load_suite(path, tmp_path / "out")
    res = runner.invoke(app, ["bench", str(path), "--dry-run"])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_every_built_in_suite_validates_and_lists_its_cells():
    shipped = builtin_suites()
    assert "cpu" in shipped
    for name, path in shipped.items():
        suite = load_suite(path)
        assert suite.cells, name
    cpu = load_suite("cpu")
    methods = {c.labels["method"] for c in cpu.cells}
    assert {"fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedyogi", "fedadam", "local"} <= methods
    assert {"centralised", "per-client-local"} <= methods and {c.cfg.seed for c in cpu.cells} == {0, 1, 2}
    res = runner.invoke(app, ["bench", "--list"])
    assert res.exit_code == 0 and "cpu" in res.output


def test_the_paired_difference_against_the_reference_by_hand():
    ref = Arm({"method": "fedavg"}, per_client={"0": {"a": 1.0, "b": 2.0, "c": 3.0}, "1": {"a": 1.2, "b": 2.2, "c": 3.2}})
    arm = Arm({"method": "x"}, per_client={"0": {"a": 1.1, "b": 2.3, "c": 3.0}, "1": {"a": 1.3, "b": 2.5, "c": 3.4}})
    c = compare(arm, ref)
    # per client, the mean over seeds of arm − ref: a 0.1, b 0.3, c 0.1; their mean 1/6 and t interval
    assert c.n_clients == 3 and c.client_mean_diff == pytest.approx(0.5 / 3)
    half = 4.302652729911275 * (0.11547005383792516 / 3 ** 0.5)  # t(0.975, 2) · s / √3, s = sd of (0.1, 0.3, 0.1)
    assert c.client_ci == pytest.approx((0.5 / 3 - half, 0.5 / 3 + half))
    assert c.p_value == pytest.approx(2 / 8)  # all-positive or all-negative signs: 2 of 2³ patterns
    assert compare(arm, Arm({"method": "y"})) is None
    assert seed_stats([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, 1.5275252316519468))
    # Holm: sorted 0.01, 0.03, 0.04, 0.5 -> 4·0.01, max(0.04, 3·0.03), max(0.09, 2·0.04), max(0.09, 0.5)
    assert holm([0.04, 0.5, 0.01, 0.03]) == pytest.approx([0.09, 0.5, 0.04, 0.09])
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0]) and holm([]) == []
    series = {"ref": {"0": [(2, 1.0), (4, 0.8)], "1": [(2, 2.0)]}, "x": {"0": [(2, 1.5), (4, 0.5)], "1": [(2, 2.25), (4, 9.0)]}}
    assert paired_differences(series, {"x": "ref"}) == {"x": {"0": [(2, 0.5), (4, -0.30000000000000004)],
                                                              "1": [(2, 0.25)]}}


def _renders_in_chromium(browser, html, suite, tmp_path: Path) -> None:
    """The page opens in headless Chromium without console errors; tables, figures and configs show."""
    from tests.conftest import open_page

    page, problems = open_page(browser, html.as_uri(), screenshot=tmp_path / "report.png")
    assert not problems, problems
    assert page.locator("h1").inner_text() == "fedllm bench: tiny"
    rows = page.locator("table").first.locator("tbody tr")
    assert rows.count() == 3 and "(reference)" in rows.nth(0).inner_text()
    svgs = page.locator("figure svg")
    assert svgs.count() == 4 and all(svgs.nth(i).bounding_box()["width"] > 300 for i in range(svgs.count()))
    assert page.locator("details").count() == len(suite.cells)
    page.locator("details summary").first.click()
    assert "fl:" in page.locator("details pre").first.inner_text()
    assert (tmp_path / "report.png").stat().st_size > 20_000
    page.close()
