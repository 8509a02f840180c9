"""`fedllm eval` over worker processes: the plan, the order units start in, the same numbers as one process,
and a failing or dying worker reported by what the parent does."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fedllm.eval.context import EvalError
from fedllm.eval.runner import EvalSettings, run_evaluation
from fedllm.eval.target import resolve_targets
from fedllm.eval.workers import MIN_WEIGHTS_BYTES, WorkerError, next_unit, plan, run_in_workers
from tests import test_eval_core

tiny_run = test_eval_core.tiny_run  # the tiny FedAvg run (a module fixture: trained once for this module)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
GiB = 2**30


def test_auto_takes_two_workers_only_on_a_cpu_where_two_workers_with_a_real_model_fit():
    size = 540 * 2**20  # the embedded model's fp32 weights
    two = plan("auto", units=18, threads=2, cuda=False, weights_bytes=size, available_bytes=20 * GiB)
    assert (two.workers, two.threads) == (2, 1)
    assert _split(plan("auto", 18, 16, False, size, 20 * GiB)) == (2, 8)
    assert plan("auto", 18, 2, True, size, 20 * GiB).workers == 1  # one GPU: one process
    assert plan("auto", 1, 2, False, size, 20 * GiB).workers == 1  # one unit left
    assert plan("auto", 18, 1, False, size, 20 * GiB).workers == 1  # one thread to share
    assert plan("auto", 18, 2, False, None, 20 * GiB).workers == 1  # size unknown before loading
    assert plan("auto", 18, 2, False, MIN_WEIGHTS_BYTES - 1, 20 * GiB).workers == 1  # start-up would dominate
    assert plan("auto", 18, 2, False, size, 14 * size / 0.75 - 1).workers == 1  # 2 workers x 7 x weights, in 3/4
    assert plan("auto", 18, 2, False, size, 14 * size / 0.75 + 1).workers == 2
    assert _split(plan(3, 18, 12, True, None, None)) == (3, 4)  # a number is taken as asked ...
    assert _split(plan(8, 2, 12, False, size, 20 * GiB)) == (2, 6)  # ... up to one per unit
    assert _split(plan(4, 18, 2, False, size, 20 * GiB)) == (2, 1)  # ... and one per thread


def _split(p) -> tuple[int, int]:
    return p.workers, p.threads


def test_units_of_untimed_metrics_start_first_then_the_longest():
    pending = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("c", 2)]
    kind = lambda u: u[0]  # noqa: E731
    seconds: dict[str, list[float]] = {}
    assert next_unit(pending, kind, seconds) == ("a", 1)
    seconds["a"] = [5.0]
    assert next_unit(pending, kind, seconds) == ("b", 1)  # b has not been timed
    seconds["b"] = [30.0]
    assert next_unit(pending, kind, seconds) == ("c", 1)
    seconds["c"] = [1.0, 3.0]
    assert [next_unit(pending, kind, seconds) for _ in range(3)] == [("b", 2), ("a", 2), ("c", 2)]
    assert pending == []


def _fresh(run: Path, dest: Path) -> list:
    shutil.copytree(run, dest / "fedavg", ignore=shutil.ignore_patterns("eval"))
    return resolve_targets(["base", str(dest / "fedavg")], out_root=dest / "out")


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("out_dir", "_metrics")} for r in rows]


def test_two_workers_give_the_numbers_and_answers_of_one_process(tiny_run, tmp_path):
    names = ["heldout", "advbench", "mmlu", "gsm8k", "humaneval"]
    settings = EvalSettings(metrics=names, data_dir=FIXTURES, options={"*": {"max_items": 3, "max_new_tokens": 12}})
    one = run_evaluation(_fresh(tiny_run, tmp_path / "one"), settings)
    two = run_evaluation(_fresh(tiny_run, tmp_path / "two"), EvalSettings(**{**settings.__dict__, "workers": 2}))
    assert _numbers(two) == _numbers(one)
    assert one[0]["heldout_loss"] != one[1]["heldout_loss"]  # the adapter is really in the slot per unit
    for r1, r2 in zip(one, two):
        for name in names:
            a, b = r1["_metrics"][name], r2["_metrics"][name]
            assert a["columns"] == b["columns"] and a["summary"] == b["summary"]
            assert _items(r2, name) == _items(r1, name)


def _items(row: dict, metric: str) -> list[dict]:
    """A metric's per-item records, without the sandbox's temporary paths in HumanEval's error output."""
    lines = (Path(row["out_dir"]) / metric / "items.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "stderr"} for x in lines]


def test_a_unit_failing_in_a_worker_is_raised_as_in_one_process_and_the_others_stay(tiny_run, tmp_path):
    targets = _fresh(tiny_run, tmp_path)
    settings = EvalSettings(metrics=["heldout", "mmlu"], data_dir=FIXTURES, workers=2,
                            options={"*": {"max_items": 2}, "mmlu": {"no_such_option": 1}})
    with pytest.raises(EvalError, match="unknown option.*no_such_option"):
        run_evaluation(targets, settings)
    assert not any((t.out_dir / "mmlu" / "summary.json").exists() for t in targets)  # nothing half-written


def _dying_runner(bars=None):
    def run(unit):
        if unit == "dies":
            os._exit(3)
        return unit.upper()
    return run


def test_a_worker_that_dies_is_named_with_its_unit():
    done: dict = {}
    with pytest.raises(WorkerError, match=r"worker \d stopped \(exit code 3\) while evaluating dies"):
        run_in_workers(["a", "dies", "b", "c"], _dying_runner, workers=2, threads=1, kind=str, describe=str,
                       on_done=done.__setitem__, console=None)
    assert done.get("a") == "A"


def test_a_models_weight_bytes_are_read_from_its_files_without_loading_it(tmp_path):
    from fedllm.config import ModelConfig
    from fedllm.models.loading import weights_bytes

    local = tmp_path / "m"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "model-00001-of-00002.safetensors").write_bytes(b"x" * 300)
    (local / "model-00002-of-00002.safetensors").write_bytes(b"x" * 200)
    assert weights_bytes(ModelConfig(name=str(local))) == 500  # every shard, not the config
    assert weights_bytes(ModelConfig(name="tiny")) == 0
    assert weights_bytes(ModelConfig(name=str(tmp_path / "q.gguf"))) is None  # dequantized size unknown
    assert weights_bytes(ModelConfig(name="nobody/not-downloaded-model")) is None  # never fetched to find out
    (tmp_path / "empty").mkdir()
    assert weights_bytes(ModelConfig(name=str(tmp_path / "empty"))) is None
