"""The judge client against a scripted fake OpenAI-compatible server on a loopback port (no sleeping),
and the local judge server's process handling with a stand-in process instead of llama.cpp."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fedllm.eval import judge_server
from fedllm.eval.judge import (
    JSON_INSTRUCTION,
    Judge,
    JudgeConfig,
    JudgeError,
    Judgment,
    JudgeRequest,
    parse_rating,
    summarize,
)
from fedllm.eval.judge_server import JudgeServerError, LocalJudgeServer

SYSTEM = "You are a helpful assistant."
FASTCHAT_TAIL = 'Rate the response by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".'


class FakeServer:
    """Serves /v1/chat/completions from a script: first line of the user message -> list of (status, content).

    The last scripted reply repeats; ``reject_formats`` lists response_format types answered with ``reject_status``.
    """

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, str]]] = {}
        self.delay: dict[str, float] = {}
        self.reject_formats: set[str] = set()
        self.reject_status = 400
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    @property
    def calls(self) -> int:
        return len(self.bodies)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reply(self, body: dict[str, Any]) -> tuple[int, str]:
        user = body["messages"][1]["content"]
        line = user.split("\n", 1)[0]
        fmt = (body.get("response_format") or {}).get("type")
        with self._lock:
            self.bodies.append(body)
            if fmt in self.reject_formats:
                return self.reject_status, f"response_format {fmt} not supported"
            queue = self.script[line]
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay.get(body["messages"][1]["content"].split("\n", 1)[0], 0.0))
                    status, content = server.reply(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                if status == 200:
                    payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": content}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                else:
                    payload = {"error": {"message": content, "type": "error", "code": status}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def make_judge(server: FakeServer, cache: Path | None = None, sleeps: list[float] | None = None,
               **cfg: Any) -> Judge:
    cfg.setdefault("output", "text")
    config = JudgeConfig(model="fake-judge", base_url=server.base_url, api_key="k", **cfg)
    record = sleeps if sleeps is not None else []
    return Judge(config, cache_path=cache, sleep=record.append)


def req(line: str, extra: str = "") -> JudgeRequest:
    return JudgeRequest(system=SYSTEM, user=line + ("\n" + extra if extra else ""))


# ---------------------------------------------------------------- parse_rating / summarize / keys


@pytest.mark.parametrize("text, expected", [
    ("[[10]]", 10.0),
    ("[[1]]", 1.0),
    ("[[0]]", None),                      # below range 1..10
    ("[[11]]", None),                     # above range
    ("[[3]] and later [[9]]", 3.0),       # the first one counts
    ("[[ 7 ]]", 7.0),                     # blanks inside the brackets are allowed
    ("Rating: [[8.5]]", 8.5),
    ("I give it [6].", 6.0),              # FastChat's fallback pattern
    ("[2] but then [[9]]", 9.0),          # [[x]] wins over an earlier [x]
    ("[[0]] then [[5]]", None),           # an out-of-range first rating is not skipped
    ("no rating at all", None),
    ("[[seven]]", None),
    ("[[7/10]]", None),
    ("", None),
])
def test_parse_rating(text: str, expected: float | None) -> None:
    assert parse_rating(text) == expected


def test_parse_rating_custom_range() -> None:
    assert parse_rating("[[0]]", low=0, high=1) == 0.0
    assert parse_rating("[[2]]", low=0, high=1) is None


def test_summarize_counts_by_hand() -> None:
    js = [Judgment(7.0, "[[7]]"), Judgment(None, "x", "unparsable: no [[rating]]"), Judgment(4.0, "[[4]]"),
          Judgment(None, "", "api: RateLimitError: slow down"), Judgment(None, "y", "unparsable: no")]
    assert summarize(js) == {"mean": 5.5, "n": 2, "unparsable": 2, "failed": 1}
    assert summarize([]) == {"mean": None, "n": 0, "unparsable": 0, "failed": 0}


def test_keys_are_stable_and_ignore_secrets() -> None:
    a = JudgeConfig(model="gpt-4", api_key="secret1", base_url="http://a/v1")
    b = JudgeConfig(model="gpt-4", api_key="secret2", base_url="http://b/v1")
    assert a.key() == b.key()
    assert "secret" not in a.key()
    for other in (JudgeConfig(model="gpt-4o"), JudgeConfig(model="gpt-4", output="text"),
                  JudgeConfig(model="gpt-4", temperature=0.5), JudgeConfig(model="gpt-4", max_tokens=10)):
        assert other.key() != a.key()
    r = JudgeRequest("s", "u")
    expected = hashlib.sha256(json.dumps([a.key(), "s", "u", "rating"]).encode()).hexdigest()
    assert r.key(a.key()) == expected
    assert len({r.key("j"), JudgeRequest("s", "u2").key("j"), JudgeRequest("s2", "u").key("j"),
                r.key("j2")}) == 4


def test_config_and_request_validation() -> None:
    with pytest.raises(ValueError, match="output"):
        JudgeConfig(model="m", output="xml")
    with pytest.raises(ValueError, match="max_concurrency"):
        JudgeConfig(model="m", max_concurrency=0)
    with pytest.raises(ValueError, match="pattern"):
        JudgeRequest("s", "u", pattern="pairwise")


def test_api_key_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDLLM_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert JudgeConfig(model="m").resolved_api_key() == "none"
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    assert JudgeConfig(model="m").resolved_api_key() == "o"
    monkeypatch.setenv("FEDLLM_JUDGE_API_KEY", "f")
    assert JudgeConfig(model="m").resolved_api_key() == "f"
    assert JudgeConfig(model="m", api_key="c").resolved_api_key() == "c"


# ---------------------------------------------------------------- rating through the fake server


def test_text_mode_scores_summary_and_order(server: FakeServer) -> None:
    replies = {"a": "[[7]]", "b": "Rating: [[8.5]]", "c": "I'd say [6].", "d": "garbage", "e": "[[11]]"}
    for line, content in replies.items():
        server.script[line] = [(200, content)]
    judge = make_judge(server)
    seen: list[int] = []
    out = judge.rate([req(k) for k in replies], progress=seen.append)
    assert [j.score for j in out] == [7.0, 8.5, 6.0, None, None]
    assert [j.raw for j in out] == list(replies.values())
    assert out[0].error is None and out[3].error.startswith("unparsable") and out[4].error.startswith("unparsable")
    assert sum(seen) == 5 and server.calls == 5
    body = next(b for b in server.bodies if b["messages"][1]["content"] == "a")
    assert body["model"] == "fake-judge" and "response_format" not in body
    assert body["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "a"}]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 1024
    # mean of 7, 8.5, 6 = 21.5 / 3; the two unparsable ones are excluded
    assert summarize(out) == {"mean": pytest.approx(21.5 / 3), "n": 3, "unparsable": 2, "failed": 0}


def test_transient_errors_are_retried_with_backoff(server: FakeServer) -> None:
    server.script["five"] = [(500, "boom"), (200, "[[5]]")]
    server.script["rate"] = [(429, "slow down"), (429, "slow down"), (200, "[[9]]")]
    server.script["unavail"] = [(503, "down")]
    server.script["bad"] = [(400, "bad request")]
    sleeps: list[float] = []
    judge = make_judge(server, sleeps=sleeps, max_retries=2, max_concurrency=1)
    out = judge.rate([req("five"), req("rate"), req("unavail"), req("bad")])
    assert [j.score for j in out] == [5.0, 9.0, None, None]
    # 2 + 3 + (1 + 2 retries) + 1 (400 is not retried)
    assert server.calls == 2 + 3 + 3 + 1
    assert out[2].error.startswith("api: InternalServerError") and out[3].error.startswith("api: BadRequestError")
    assert summarize(out)["failed"] == 2
    # backoff base 1 s doubling, jitter in [0.5, 1] of it: attempt 0 -> [0.5, 1], attempt 1 -> [1, 2]
    assert len(sleeps) == 1 + 2 + 2
    first, second = [0.5, 1.0], [1.0, 2.0]
    for s, (lo, hi) in zip(sleeps, [first, first, second, first, second]):
        assert lo <= s <= hi


def test_failed_calls_are_not_cached_but_others_are(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    server.script["ok"] = [(200, "[[6]]")]
    server.script["junk"] = [(200, "no score here")]
    server.script["down"] = [(503, "down")]
    out = make_judge(server, cache, max_retries=0).rate([req("ok"), req("junk"), req("down")])
    assert [j.score for j in out] == [6.0, None, None] and server.calls == 3
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert sorted(x["raw"] for x in lines) == ["[[6]]", "no score here"]
    assert all(set(x) == {"key", "score", "raw", "error"} for x in lines)
    server.script["down"] = [(200, "[[2]]")]
    again = make_judge(server, cache, max_retries=0).rate([req("ok"), req("junk"), req("down")])
    assert [j.score for j in again] == [6.0, None, 2.0]
    assert [j.cached for j in again] == [True, True, False]
    assert server.calls == 4  # only the failed one was asked again


def test_cache_hit_makes_no_calls(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    for k in "abc":
        server.script[k] = [(200, f"[[{ord(k) - 96}]]")]
    first = make_judge(server, cache).rate([req(k) for k in "abc"])
    assert server.calls == 3 and not any(j.cached for j in first)
    seen: list[int] = []
    second = make_judge(server, cache).rate([req(k) for k in "cab"], progress=seen.append)
    assert server.calls == 3
    assert [j.score for j in second] == [3.0, 1.0, 2.0] and all(j.cached for j in second)
    assert sum(seen) == 3
    # another judge identity does not reuse these judgments
    make_judge(server, cache, temperature=0.7).rate([req("a")])
    assert server.calls == 4


def test_duplicate_requests_are_called_once(server: FakeServer) -> None:
    server.script["x"] = [(200, "[[4]]")]
    out = make_judge(server).rate([req("x"), req("x"), req("x")])
    assert server.calls == 1 and [j.score for j in out] == [4.0, 4.0, 4.0]


def test_truncated_last_cache_line_is_tolerated(server: FakeServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    server.script["a"] = [(200, "[[3]]")]
    server.script["b"] = [(200, "[[8]]")]
    make_judge(server, cache).rate([req("a")])
    with open(cache, "a") as f:
        f.write('{"key": "deadbeef", "score": 5, "ra')  # a crash mid-append
    judge = make_judge(server, cache)
    out = judge.rate([req("a"), req("b")])
    assert [j.score for j in out] == [3.0, 8.0] and [j.cached for j in out] == [True, False]
    assert server.calls == 2
    rows = [json.loads(x) for x in cache.read_text().splitlines()]  # the partial line is gone, the file is clean
    assert [r["score"] for r in rows] == [3.0, 8.0]


def test_corrupt_middle_cache_line_is_an_error(tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    cache.write_text('{"key": "a", "score": 1, "raw": "", "error": null}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2"):
        Judge(JudgeConfig(model="m", api_key="k", base_url="http://127.0.0.1:9/v1"), cache_path=cache)


def test_concurrency_limit_and_order(server: FakeServer) -> None:
    lines = [f"q{i}" for i in range(9)]
    for i, line in enumerate(lines):
        server.script[line] = [(200, f"[[{i + 1}]]")]
        server.delay[line] = 0.02 * (9 - i)  # later requests finish first
    out = make_judge(server, max_concurrency=3).rate([req(x) for x in lines])
    assert [j.score for j in out] == [float(i + 1) for i in range(9)]
    assert server.max_in_flight == 3


def test_fatal_endpoint_errors_raise_once(server: FakeServer) -> None:
    server.script["x"] = [(404, "The model `fake-judge` does not exist")]
    with pytest.raises(JudgeError, match=r"fake-judge.*404"):
        make_judge(server, max_concurrency=1).rate([req("x")] + [req("x", str(i)) for i in range(5)])
    assert server.calls == 1
    server.script["y"] = [(401, "invalid api key")]
    with pytest.raises(JudgeError, match="401"):
        make_judge(server).rate([req("y")])


# ---------------------------------------------------------------- JSON output


def test_json_mode_schema_prompt_and_parsing(server: FakeServer) -> None:
    server.script["j1"] = [(200, '{"explanation": "fine", "rating": 9}')]
    server.script["j2"] = [(200, "not json but Rating: [[4]]")]
    server.script["j3"] = [(200, '{"explanation": "x", "rating": 11}')]
    server.script["j4"] = [(200, '{"explanation": "oops"')]
    judge = make_judge(server, output="json")
    out = judge.rate([req("j1", FASTCHAT_TAIL), req("j2"), req("j3"), req("j4")])
    assert [j.score for j in out] == [9.0, 4.0, None, None]
    assert out[0].raw == '{"explanation": "fine", "rating": 9}'
    assert out[2].error.startswith("unparsable") and out[3].error.startswith("unparsable")
    by_line = {b["messages"][1]["content"].split("\n", 1)[0]: b for b in server.bodies}
    fmt = by_line["j1"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "judgment"
    assert fmt["json_schema"]["schema"]["required"] == ["explanation", "rating"]
    # the [[rating]] prompt gets the JSON instruction appended, otherwise verbatim; others are untouched
    assert by_line["j1"]["messages"][1]["content"] == "j1\n" + FASTCHAT_TAIL + JSON_INSTRUCTION
    assert by_line["j1"]["messages"][0]["content"] == SYSTEM
    assert by_line["j2"]["messages"][1]["content"] == "j2"


def test_json_object_mode_sends_llama_cpp_form(server: FakeServer) -> None:
    server.script["a"] = [(200, '{"explanation": "", "rating": 2}')]
    out = make_judge(server, output="json_object").rate([req("a")])
    assert out[0].score == 2.0
    fmt = server.bodies[0]["response_format"]
    assert fmt["type"] == "json_object" and fmt["schema"]["properties"]["rating"]["enum"] == list(range(1, 11))


def test_auto_falls_back_to_text_on_400(server: FakeServer) -> None:
    server.reject_formats = {"json_schema", "json_object"}
    for k in "abcd":
        server.script[k] = [(200, "[[5]]")]
    judge = make_judge(server, output="auto")
    assert judge.resolved_output is None
    out = judge.rate([req(k, FASTCHAT_TAIL) for k in "abcd"])
    assert [j.score for j in out] == [5.0] * 4
    assert judge.resolved_output == "text"
    # one probe sequence (json_schema 400, json_object 400, text ok), then text only
    assert server.calls == 3 + 3
    assert [(b.get("response_format") or {}).get("type") for b in server.bodies[:3]] == ["json_schema", "json_object",
                                                                                         None]
    assert all("response_format" not in b for b in server.bodies[3:])
    assert all(JSON_INSTRUCTION not in b["messages"][1]["content"] for b in server.bodies[2:])


@pytest.mark.parametrize("status", [422, 500])  # FastAPI's validation error; llama-cpp-python 0.3.x turns it into 500
def test_auto_picks_json_object_when_json_schema_is_refused(server: FakeServer, status: int) -> None:
    server.reject_formats, server.reject_status = {"json_schema"}, status
    for k in "ab":
        server.script[k] = [(200, '{"explanation": "e", "rating": 3}')]
    sleeps: list[float] = []
    judge = make_judge(server, sleeps=sleeps, output="auto")
    out = judge.rate([req("a"), req("b")])
    assert [j.score for j in out] == [3.0, 3.0] and judge.resolved_output == "json_object"
    assert server.calls == 2 + 1 and sleeps == []  # a refused response_format is not retried


def test_auto_keeps_json_when_accepted(server: FakeServer) -> None:
    for k in "abc":
        server.script[k] = [(200, '{"explanation": "e", "rating": 7}')]
    judge = make_judge(server, output="auto")
    assert [j.score for j in judge.rate([req(k) for k in "abc"])] == [7.0] * 3
    assert judge.resolved_output == "json" and server.calls == 3


# ---------------------------------------------------------------- local judge server lifecycle (fake process)

FAKE_LLAMA_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, alias = int(sys.argv[1]), sys.argv[2]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        data = json.dumps({"object": "list", "data": [{"id": alias, "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
print("fake llama server up", flush=True)
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


class ScriptedServer(LocalJudgeServer):
    """LocalJudgeServer whose child process is a small Python script instead of llama_cpp.server."""

    def __init__(self, script: str, gguf: Path, **kw: Any) -> None:
        super().__init__(gguf, **kw)
        self.script = script

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.port), self.model_alias]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(judge_server, "missing_server_modules", lambda: [])
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_server_missing_dependency_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judge_server, "missing_server_modules", lambda: ["llama_cpp"])
    with pytest.raises(JudgeServerError, match=r"pip install 'fedllm\[judge-server\]'"):
        LocalJudgeServer(tmp_path / "m.gguf").start()


def test_server_missing_gguf(gguf: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        LocalJudgeServer(gguf.parent / "nope.gguf").start()


def test_server_start_ready_config_and_stop(gguf: Path, tmp_path: Path) -> None:
    srv = ScriptedServer(FAKE_LLAMA_SERVER, gguf, model_alias="judge-x", log_path=tmp_path / "srv.log")
    with pytest.raises(JudgeServerError, match="start"):
        srv.base_url
    with srv:
        assert srv.proc is not None and srv.port is not None
        pid = srv.proc.pid
        assert pid_alive(pid) and os.getpgid(pid) == pid  # its own process group
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        cfg = srv.judge_config(max_concurrency=2)
        assert (cfg.model, cfg.base_url, cfg.max_concurrency, cfg.output) == ("judge-x", srv.base_url, 2, "json_object")
    assert not pid_alive(pid) and srv.proc is None
    srv.stop()  # idempotent
    assert "fake llama server up" in (tmp_path / "srv.log").read_text()
    cmd = LocalJudgeServer(gguf, port=1234, threads=2).command()
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--n_threads") + 1] == "2" and cmd[cmd.index("--model_alias") + 1] == "local-judge"
    assert cmd[cmd.index("--n_threads_batch") + 1] == "2"


def test_server_that_dies_reports_its_log(gguf: Path) -> None:
    srv = ScriptedServer("import sys; print('model load failed: bad magic'); sys.exit(3)", gguf,
                         log_path=gguf.parent / "dead.log")
    with pytest.raises(JudgeServerError, match=r"(?s)code 3.*bad magic"):
        srv.start()
    assert srv.proc is None


def test_server_startup_timeout_kills_it(gguf: Path) -> None:
    srv = ScriptedServer("import time; print('loading', flush=True); time.sleep(60)", gguf, startup_timeout_s=0.5,
                         log_path=gguf.parent / "slow.log")
    with pytest.raises(JudgeServerError, match=r"(?s)not ready.*loading"):
        srv.start()
    assert srv.proc is None


def test_json_reply_with_a_raw_newline_in_its_explanation_still_scores() -> None:
    from fedllm.eval.judge import _score_reply

    # a real llama.cpp reply: the explanation string holds a literal newline (invalid in strict JSON)
    reply = '{ "explanation": "The object is:\n```json\n{" ,"rating":1} '
    assert _score_reply(reply, "json_object", "rating") == (1.0, None)
    assert _score_reply('{"explanation": "ok", "rating": 11}', "json", "rating")[0] is None
    assert _score_reply("31.31.31.31", "json_object", "rating") == (
        None, "unparsable: JSON reply without a valid rating nor [[rating]] 1..10")
