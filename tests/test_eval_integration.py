"""End to end with real models: MT-Bench on two questions through `fedllm eval`, answered by the
embedded SmolLM2 and graded by a llama.cpp judge server on the same GGUF (a 135M judge's scores mean
nothing: this checks the pipeline — prompts, structured output, parsing, caches — not the numbers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedllm.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def test_mt_bench_end_to_end_with_a_local_judge_server(tmp_path):
    from fedllm.eval.judge_server import LocalJudgeServer, embedded_gguf_path, missing_server_modules

    if missing := missing_server_modules():
        pytest.skip(f"llama-cpp-python[server] not installed (missing {', '.join(missing)}): pip install 'fedllm[judge-server]'")
    server = LocalJudgeServer(embedded_gguf_path(), n_ctx=4096, threads=2, log_path=tmp_path / "judge.log").start()
    pid = server.proc.pid
    try:
        args = ["eval", "base", "--metrics", "mt_bench", "--data-dir", str(FIXTURES), "--max-items", "2",
                "--max-new-tokens", "48", "--out", str(tmp_path / "eval"), "--judge-model", server.model_alias,
                "--judge-base-url", server.base_url, "--judge-output", "json_object", "--judge-concurrency", "1"]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        out = tmp_path / "eval" / "base-smollm2-135m-instruct" / "mt_bench"
        summary = json.loads((out / "summary.json").read_text())
        # structured output: every judgment parses into a 1-10 score
        assert summary["summary"]["turn1"] == {"judged": 2, "unparsable": 0, "failed": 0}
        assert summary["summary"]["turn2"] == {"judged": 2, "unparsable": 0, "failed": 0}
        cols = summary["columns"]
        assert all(1 <= cols[c] <= 10 for c in ("mt1", "mt2", "mt_bench"))
        assert cols["mt_bench"] == pytest.approx((cols["mt1"] + cols["mt2"]) / 2)
        items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
        assert len(items) == 2 and {it["category"] for it in items} == {"writing", "reasoning"}  # round-robin over categories; reasoning is reference-guided
        assert all(len(it["answers"]) == 2 and all(it["answers"]) for it in items)
        assert "mt_bench" in res.output and "mt1" in res.output
        # the cache: recomputing the metric makes no new judge call and no new generation
        judged = (out / "judgments.jsonl").read_text()
        generated = (out.parent / "generations.jsonl").read_text()
        again = CliRunner().invoke(app, [*args, "--redo"])
        assert again.exit_code == 0, again.output
        assert (out / "judgments.jsonl").read_text() == judged
        assert (out.parent / "generations.jsonl").read_text() == generated
        assert json.loads((out / "summary.json").read_text())["columns"] == cols
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
