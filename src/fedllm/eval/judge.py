"""LLM-as-a-judge through any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, ...).

A `Judge` sends (system, user) prompts built by the benchmarks and turns each reply into a score,
FastChat style: the first ``[[x]]`` in the text (falling back to ``[x]``) or, in JSON mode, the
``rating`` field of a structured reply. Judgments are cached in an append-only JSONL file keyed by
the judge identity and the prompt, so a re-run only pays for what is new or failed.

Error policy:
- connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter;
  a request still failing after ``max_retries`` yields a Judgment with ``score=None`` and
  ``error="api: <ExceptionName>: ..."`` that is NOT cached (a later run retries it);
- 400/422 and other client errors fail that request only (not cached either);
- 401, 403 and 404 concern the endpoint, the key or the model name and would fail every request:
  `rate` raises `JudgeError` at the first one instead of returning N failed judgments (judgments
  finished before it are cached and kept).

Output modes: ``"text"`` parses ``[[rating]]`` from free text; ``"json"`` asks for OpenAI structured
output (``response_format={"type": "json_schema", ...}``); ``"json_object"`` asks for the
llama-cpp-python form (``{"type": "json_object", "schema": ...}``, which it compiles into a grammar;
llama-cpp-python 0.3.x refuses the json_schema form with a 500 naming response_format);
``"auto"`` tries json, then json_object, then text on the first uncached request, falling back on a
400/422 answer or any error naming response_format, and keeps the first form the endpoint accepts for
the rest of the Judge's life (`Judge.resolved_output`). Cache keys use the configured mode, so an
``"auto"`` cache is shared whatever it resolved to. A request failing on some other 5xx while "auto"
is still undecided fails alone, and the next request probes again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedllm.jsonl import dumps

OUTPUT_MODES = ("auto", "text", "json", "json_object")
AUTO_ORDER = ("json", "json_object", "text")
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0

# pattern -> (low, high) of the score it asks for; "rating" is FastChat's single-answer grading 1-10
PATTERNS: dict[str, tuple[float, float]] = {"rating": (1, 10)}

RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": {"type": "string"},
        "rating": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["explanation", "rating"],
}
# llama.cpp compiles the schema into a grammar but ignores minimum/maximum: the ratings are spelled out as an
# enum. (No maxLength on the explanation: llama-cpp-python 0.3.x unrolls it into a grammar that kills the server.)
GRAMMAR_RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": {"type": "string"},
        "rating": {"type": "integer", "enum": list(range(1, 11))},
    },
    "required": ["explanation", "rating"],
}
JSON_INSTRUCTION = (
    '\n\nReply with a JSON object {"explanation": "<your explanation>", "rating": <integer from 1 to 10>} '
    "instead of the [[rating]] format."
)

_DOUBLE = re.compile(r"\[\[\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\]\]")
_SINGLE = re.compile(r"\[\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\]")
_ASKS_TEXT_RATING = re.compile(r"\[\[\s*rating\s*\]\]", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge endpoint cannot serve any request (wrong URL, key or model name)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Which judge to call and how: model, endpoint, concurrency, retries and decoding."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    max_concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 1024
    output: str = "auto"

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("JudgeConfig.model: empty judge model name")
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"JudgeConfig.output: {self.output!r} is not one of {OUTPUT_MODES}")
        if self.max_concurrency < 1:
            raise ValueError(f"JudgeConfig.max_concurrency: must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"JudgeConfig.max_retries: must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0 or self.max_tokens < 1 or self.temperature < 0:
            raise ValueError(f"JudgeConfig: invalid timeout_s/max_tokens/temperature in {self}")

    def key(self) -> str:
        """Stable identity of the judge for cache keys (never includes the API key or the URL)."""
        return json.dumps({"model": self.model, "output": self.output, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}, sort_keys=True)

    def resolved_api_key(self) -> str:
        """The key to send: the config's, else $FEDLLM_JUDGE_API_KEY, $OPENAI_API_KEY, else "none"."""
        return (self.api_key or os.environ.get("FEDLLM_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
                or "none")


@dataclass(frozen=True)
class JudgeRequest:
    """One judge prompt (system + user message) and the score pattern its reply follows."""

    system: str
    user: str
    pattern: str = "rating"
    temperature: float | None = None  # None: the judge's own (JudgeConfig); a metric's preset may fix it
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"JudgeRequest.pattern: unknown pattern {self.pattern!r} (known: {sorted(PATTERNS)})")

    def key(self, judge_key: str) -> str:
        """Cache key: sha256 over the judge identity, both prompts, the pattern and any sampling override."""
        parts: list[Any] = [judge_key, self.system, self.user, self.pattern]
        if self.temperature is not None or self.max_tokens is not None:
            parts.append([self.temperature, self.max_tokens])
        blob = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Judgment:
    """A judge's verdict: ``score`` is None when the reply was unparsable or the call failed."""

    score: float | None
    raw: str
    error: str | None = None
    cached: bool = False
    seconds: float = 0.0


def parse_rating(text: str, low: float = 1, high: float = 10) -> float | None:
    """FastChat's convention: the first ``[[x]]`` (else the first ``[x]``); None if absent or outside [low, high].

    Blanks inside the brackets are allowed (``[[ 7 ]]`` -> 7.0); only the first match counts, so an
    out-of-range first rating gives None even if a later one is in range.
    """
    match = _DOUBLE.search(text) or _SINGLE.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if low <= value <= high else None


def summarize(judgments: list[Judgment]) -> dict:
    """Mean of the parsed scores and how many were parsed, unparsable or failed."""
    scores = [j.score for j in judgments if j.score is not None]
    unparsable = sum(1 for j in judgments if j.score is None and (j.error or "").startswith("unparsable"))
    failed = sum(1 for j in judgments if j.score is None) - unparsable
    return {"mean": sum(scores) / len(scores) if scores else None, "n": len(scores),
            "unparsable": unparsable, "failed": failed}


def judgment_counts(judgments: list[Judgment]) -> dict[str, int]:
    """Scored, unparsable and failed judgments as metric summaries report them; the last two are excluded
    from every mean."""
    s = summarize(judgments)
    return {"judged": s["n"], "unparsable": s["unparsable"], "failed": s["failed"]}


def _score_reply(text: str, mode: str, pattern: str) -> tuple[float | None, str | None]:
    """Score and error (None, or "unparsable: ...") of a reply given in ``mode``."""
    low, high = PATTERNS[pattern]
    if mode != "text":
        try:
            # strict=False: a raw newline inside the explanation string does not hide a clear rating
            obj = json.loads(text, strict=False)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "rating" in obj:
            value = obj["rating"]
            if isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    value = None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                if low <= value <= high:
                    return float(value), None
                return None, f"unparsable: JSON rating {value} outside {low:g}..{high:g}"
    score = parse_rating(text, low, high)
    if score is not None:
        return score, None
    where = "JSON reply without a valid rating nor [[rating]]" if mode != "text" else "no [[rating]] in range"
    return None, f"unparsable: {where} {low:g}..{high:g}"


def _response_format(mode: str) -> dict[str, Any] | None:
    if mode == "json":
        return {"type": "json_schema", "json_schema": {"name": "judgment", "schema": RATING_SCHEMA}}
    if mode == "json_object":
        return {"type": "json_object", "schema": GRAMMAR_RATING_SCHEMA}
    return None


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    status = _status(exc)
    return isinstance(exc, openai.APIStatusError) and status is not None and (status >= 500 or status == 408)


def _format_refused(exc: BaseException) -> bool:
    """Whether the endpoint refused the request as such (400/422), or its response_format (llama-cpp-python: 500)."""
    import openai

    if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
        return True
    return isinstance(exc, openai.APIStatusError) and "response_format" in str(exc)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    return f"api: {type(exc).__name__}: {exc}"


class _Cache:
    """Append-only JSONL of judgments by key; a truncated last line (crash mid-write) is dropped."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._truncate_to: int | None = None
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        lines = data.split(b"\n")
        offset = 0
        for i, line in enumerate(lines, start=1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
                    raise ValueError("not an object with a string 'key'")
            except ValueError as exc:
                if i == len(lines):  # last line without its newline: an interrupted append
                    self._truncate_to = start
                    break
                raise ValueError(f"{path}:{i}: corrupt judge cache line ({exc}); delete the line or the file") from exc
            self.entries[obj["key"]] = obj

    def get(self, key: str) -> Judgment | None:
        obj = self.entries.get(key)
        if obj is None:
            return None
        return Judgment(score=obj.get("score"), raw=obj.get("raw", ""), error=obj.get("error"), cached=True)

    def put(self, key: str, judgment: Judgment) -> None:
        record = {"key": key, "score": judgment.score, "raw": judgment.raw, "error": judgment.error}
        with self._lock:
            self.entries[key] = record
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._truncate_to is not None:
                with open(self.path, "r+b") as f:
                    f.truncate(self._truncate_to)
                self._truncate_to = None
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(dumps(record) + "\n")
                f.flush()


class Judge:
    """Rates judge prompts concurrently through an OpenAI-compatible endpoint, with retries and a JSONL cache."""

    def __init__(self, cfg: JudgeConfig, cache_path: Path | None = None, client: Any = None, *,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.cache = _Cache(Path(cache_path) if cache_path is not None else None)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._mode_lock = threading.Lock()
        self.resolved_output: str | None = None if cfg.output == "auto" else cfg.output
        if client is None:
            import openai

            client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.resolved_api_key(), timeout=cfg.timeout_s,
                                   max_retries=0)
        self.client = client

    @property
    def endpoint(self) -> str:
        return str(getattr(self.client, "base_url", None) or self.cfg.base_url or "<default>")

    def rate(self, requests: list[JudgeRequest], progress: Callable[[int], None] | None = None) -> list[Judgment]:
        """Judge every request (cached ones without a call), in order; ``progress(k)`` reports k more done."""
        judge_key = self.cfg.key()
        keys = [r.key(judge_key) for r in requests]
        out: list[Judgment | None] = [self.cache.get(k) for k in keys]
        first_slot: dict[str, int] = {}
        duplicates: list[tuple[int, int]] = []
        todo: list[int] = []
        for i, (k, j) in enumerate(zip(keys, out)):
            if j is not None:
                continue
            if k in first_slot:
                duplicates.append((i, first_slot[k]))
            else:
                first_slot[k] = i
                todo.append(i)
        if progress is not None and len(requests) - len(todo) - len(duplicates) > 0:
            progress(len(requests) - len(todo) - len(duplicates))

        abort = threading.Event()  # set at the first JudgeError: queued requests are then skipped

        def run(i: int) -> None:
            if abort.is_set():
                return
            try:
                out[i] = self._judge_one(requests[i], keys[i])
            except JudgeError:
                abort.set()
                raise
            if progress is not None:
                progress(1)

        # under "auto", judge one request alone until the endpoint's output form is known
        while todo and self.resolved_output is None:
            run(todo.pop(0))
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(todo))) as pool:
                futures: list[Future[None]] = [pool.submit(run, i) for i in todo]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise f.exception()  # type: ignore[misc]
        for i, first in duplicates:
            src = out[first]
            assert src is not None
            # a repeated prompt is served from its first copy's judgment, without a call of its own
            out[i] = Judgment(src.score, src.raw, src.error, cached=not (src.error or "").startswith("api"))
            if progress is not None:
                progress(1)
        return [j for j in out if j is not None]

    def _judge_one(self, req: JudgeRequest, key: str) -> Judgment:
        t0 = time.perf_counter()
        try:
            text, mode = self._call(req)
        except JudgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failed call becomes an uncached failed judgment
            return Judgment(score=None, raw="", error=_describe(exc), seconds=time.perf_counter() - t0)
        score, error = _score_reply(text, mode, req.pattern)
        judgment = Judgment(score=score, raw=text, error=error, seconds=time.perf_counter() - t0)
        self.cache.put(key, judgment)
        return judgment

    def _call(self, req: JudgeRequest) -> tuple[str, str]:
        """The reply text and the output mode it was produced in; resolves "auto" on first use."""
        mode = self.resolved_output
        if mode is not None:
            return self._create_with_retries(req, mode), mode
        import openai

        with self._mode_lock:
            if self.resolved_output is not None:
                mode = self.resolved_output
                return self._create_with_retries(req, mode), mode
            last: Exception | None = None
            for mode in AUTO_ORDER:
                try:
                    text = self._create_with_retries(req, mode)
                except openai.APIStatusError as exc:
                    if not _format_refused(exc):
                        raise
                    last = exc  # this response_format (or the request itself) is refused: try the next form
                    continue
                self.resolved_output = mode
                return text, mode
            assert last is not None
            raise last

    def _create_with_retries(self, req: JudgeRequest, mode: str) -> str:
        attempt = 0
        while True:
            try:
                return self._create(req, mode)
            except Exception as exc:
                self._raise_if_fatal(exc)
                refused = mode != "text" and _format_refused(exc)  # deterministic: retrying cannot help
                if refused or not _is_transient(exc) or attempt >= self.cfg.max_retries:
                    raise
                delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt) * self._rng.uniform(0.5, 1.0)
                hint = _retry_after(exc)
                if hint is not None:
                    delay = min(BACKOFF_CAP_S, max(delay, hint))
                self._sleep(delay)
                attempt += 1

    def _raise_if_fatal(self, exc: Exception) -> None:
        status = _status(exc)
        if status == 404:
            raise JudgeError(f"judge endpoint {self.endpoint}: model {self.cfg.model!r} or route not found (404): "
                             f"{exc}") from exc
        if status in (401, 403):
            raise JudgeError(f"judge endpoint {self.endpoint}: authentication refused ({status}); set "
                             f"JudgeConfig.api_key or FEDLLM_JUDGE_API_KEY / OPENAI_API_KEY: {exc}") from exc

    def _create(self, req: JudgeRequest, mode: str) -> str:
        user = req.user
        if mode != "text" and (_ASKS_TEXT_RATING.search(req.system) or _ASKS_TEXT_RATING.search(req.user)):
            user = user + JSON_INSTRUCTION
        kwargs: dict[str, Any] = {}
        fmt = _response_format(mode)
        if fmt is not None:
            kwargs["response_format"] = fmt
        resp = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=[{"role": "system", "content": req.system}, {"role": "user", "content": user}],
            temperature=self.cfg.temperature if req.temperature is None else req.temperature,
            max_tokens=self.cfg.max_tokens if req.max_tokens is None else req.max_tokens, **kwargs)
        if not resp.choices:
            return ""
        return resp.choices[0].message.content or ""
