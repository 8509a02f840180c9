"""A real llama.cpp judge server on the embedded SmolLM2-135M-Instruct GGUF, judged through `Judge`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedllm.eval.judge import Judge, JudgeRequest, summarize
from fedllm.eval.judge_server import LocalJudgeServer, embedded_gguf_path, missing_server_modules

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# FastChat's single-answer grading prompt ("single-v1"), as MT-Bench uses it
SYSTEM = "You are a helpful assistant."
USER = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation "
    "by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate "
    'the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".\n\n[Question]\nWhat is the capital of France?\n\n'
    "[The Start of Assistant's Answer]\nThe capital of France is Paris.\n[The End of Assistant's Answer]"
)


def _gguf() -> Path:
    missing = missing_server_modules()
    if missing:
        pytest.skip(f"llama-cpp-python[server] not installed (missing {', '.join(missing)}): "
                    "pip install 'fedllm[judge-server]'")
    try:
        return embedded_gguf_path()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"embedded judge GGUF not available: {exc}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalJudgeServer]:
    gguf = _gguf()
    log = tmp_path_factory.mktemp("judge-server") / "server.log"
    with LocalJudgeServer(gguf, n_ctx=2048, threads=2, log_path=log, startup_timeout_s=120) as srv:
        yield srv


def test_json_mode_gives_a_rating(server: LocalJudgeServer, tmp_path: Path) -> None:
    judge = Judge(server.judge_config(output="auto", max_tokens=256), cache_path=tmp_path / "c.jsonl")
    t0 = time.perf_counter()
    [j] = judge.rate([JudgeRequest(SYSTEM, USER)])
    print(f"\njson judgment: {time.perf_counter() - t0:.2f} s ({j.seconds:.2f} s in the call): {j.raw!r}")
    # llama-cpp-python refuses OpenAI's json_schema form: auto settles on its own json_object + schema form
    assert judge.resolved_output == "json_object"
    assert j.error is None and j.score is not None and 1 <= j.score <= 10 and j.score == int(j.score)
    # a second judgment of the same prompt comes from the cache, without a call
    [again] = Judge(server.judge_config(output="auto", max_tokens=256), cache_path=tmp_path / "c.jsonl").rate(
        [JudgeRequest(SYSTEM, USER)])
    assert again.cached and again.score == j.score


def test_text_mode_call_is_well_formed(server: LocalJudgeServer) -> None:
    judge = Judge(server.judge_config(output="text", max_tokens=128))
    t0 = time.perf_counter()
    [j] = judge.rate([JudgeRequest(SYSTEM, USER)])
    print(f"\ntext judgment: {time.perf_counter() - t0:.2f} s: {j.raw!r}")
    # a 135M model need not follow the [[rating]] format: the call must work and the Judgment be coherent
    assert j.raw.strip() and not (j.error or "").startswith("api")
    assert (j.score is None) == (j.error is not None)
    assert j.score is None or 1 <= j.score <= 10
    s = summarize([j])
    assert s["failed"] == 0 and s["n"] + s["unparsable"] == 1


def test_stop_kills_the_process(tmp_path: Path) -> None:
    srv = LocalJudgeServer(_gguf(), n_ctx=512, threads=1, log_path=tmp_path / "s.log").start()
    assert srv.proc is not None
    pid = srv.proc.pid
    os.kill(pid, 0)  # alive
    srv.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    srv.stop()  # idempotent
