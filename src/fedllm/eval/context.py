"""What a metric gets to work with (``EvalContext``) and what it returns (``MetricResult``).

A metric is one module under ``eval/metrics/`` plus one registry line. It asks the context for
generations, log-likelihoods and judgments; the context caches every item on disk, so an
interrupted evaluation resumes where it stopped and a finished one is not recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from rich.console import Console

from fedllm.data.formatting import Template, prompt_text
from fedllm.data.schema import Message
from fedllm.eval.generation import Decoding, GenRequest, TextModel
from fedllm.eval.target import Target
from fedllm.jsonl import JsonlCache
from fedllm.progress import progress_bar
from fedllm.seeding import derive_seed

T = TypeVar("T")


class EvalError(RuntimeError):
    """An evaluation cannot run as asked (missing judge, missing data, bad option)."""


@dataclass
class MetricResult:
    columns: dict[str, float | None]  # the numbers that go into the result table
    summary: dict[str, Any] = field(default_factory=dict)  # counts, breakdowns; "excluded": judgments left out of means
    items: list[dict[str, Any]] = field(default_factory=list)  # one record per evaluated item


class Metric(Protocol):
    name: ClassVar[str]
    columns: ClassVar[tuple[str, ...]]  # table columns, in order
    needs_judge: ClassVar[bool]
    description: ClassVar[str]

    def run(self, ctx: EvalContext) -> MetricResult: ...


@dataclass
class EvalContext:
    metric: str
    target: Target
    model: TextModel
    template: Template
    fingerprint: str  # model + adapter + template: part of every cache key
    out_dir: Path  # this metric's directory for this target
    options: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None
    seed: int = 0
    judge: Any = None  # fedllm.eval.judge.Judge or None
    judge_factory: Callable[[Path], Any] | None = None
    batch_size: int = 8
    console: Console = field(default_factory=lambda: Console(stderr=True))
    bars: Callable[[str, int], Any] | None = None  # progress bars elsewhere than the console (a worker's, sent to its parent)
    stats: dict[str, float] = field(default_factory=lambda: {"generated_tokens": 0, "generation_seconds": 0.0})

    # ------------------------------------------------------------------ options
    _used: set[str] = field(default_factory=set)

    def option(self, name: str, default: T) -> T:
        """A metric option from ``--set <metric>.<name>=...`` (or a global one), typed like its default."""
        self._used.add(name)
        if name not in self.options:
            return default
        value = self.options[name]
        if default is None or isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)):
            return value
        raise EvalError(f"{self.metric}.{name}={value!r}: expected {type(default).__name__}")

    def unused_options(self) -> list[str]:
        return sorted(set(self.options) - self._used - GLOBAL_OPTIONS)

    def subset(self, items: Sequence[T], group: Callable[[T], str] | None = None, default: int | None = None) -> list[T]:
        """The first ``max_items`` items (option), taken round-robin over groups when ``group`` is given,
        so a small subset still covers every category. Deterministic: same items every call."""
        n = self.option("max_items", default)
        if n is None or n >= len(items):
            return list(items)
        if group is None:
            return list(items[:n])
        buckets: dict[str, list[T]] = {}
        for it in items:
            buckets.setdefault(group(it), []).append(it)
        out: list[T] = []
        queues = list(buckets.values())
        while len(out) < n:
            for q in queues:
                if q and len(out) < n:
                    out.append(q.pop(0))
        order = {id(it): i for i, it in enumerate(items)}
        return sorted(out, key=lambda it: order[id(it)])

    # ------------------------------------------------------------------ model
    def prompt(self, messages: Iterable[dict[str, str] | Message]) -> str:
        """The generation prompt for a conversation, rendered with the training template."""
        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in messages]
        return prompt_text(msgs, self.template)

    def decoding(self, temperature: float, max_new_tokens: int, stop: tuple[str, ...] = (), top_p: float = 1.0) -> Decoding:
        """Decoding settings, with ``max_new_tokens``/``temperature`` overridable by options."""
        return Decoding(temperature=float(self.option("temperature", temperature)), top_p=top_p,
                        max_new_tokens=int(self.option("max_new_tokens", max_new_tokens)), stop=stop)

    def generate(self, items: Sequence[tuple[str, str, Decoding]], desc: str = "generate") -> list[str]:
        """Answers for ``(key, prompt, decoding)`` items; cached per item, seeded per item. Keys name the
        item, not the metric ("advbench/12"), so metrics asking the same question share one answer."""
        cache = JsonlCache(self.target.out_dir / "generations.jsonl")  # shared by the target's metrics
        keys = [f"{self.fingerprint}|{key}|{d.key()}" for key, _, d in items]
        todo = [GenRequest(k, prompt, d, seed=derive_seed(self.seed, "generate", key))
                for k, (key, prompt, d) in zip(keys, items) if k not in cache]
        if todo:
            with self.progress(f"{self.target.label} {desc}", len(todo)) as advance:
                t0 = time.perf_counter()

                def done(req: GenRequest, text: str) -> None:
                    n = len(self.model.encode(text))
                    self.stats["generated_tokens"] += n
                    cache.put(req.key, {"text": text, "tokens": n})
                    advance()

                self.model.generate(todo, batch_size=self.batch_size, on_done=done)
                self.stats["generation_seconds"] += time.perf_counter() - t0
        return [cache.data[k]["text"] for k in keys]

    def continuation_logprobs(self, items: Sequence[tuple[str, str, Sequence[str]]], desc: str = "score") -> list[list[float]]:
        """Log-likelihoods of each continuation after its context, for ``(key, context, continuations)``; cached."""
        cache = JsonlCache(self.out_dir / "logprobs.jsonl")
        keys = [f"{self.fingerprint}|{key}|{'|'.join(conts)}" for key, _, conts in items]
        todo = [(k, ctx, conts) for k, (_, ctx, conts) in zip(keys, items) if k not in cache]
        if todo:
            with self.progress(f"{self.target.label} {desc}", len(todo)) as advance:
                scores = self.model.continuation_logprobs_each([(ctx, conts) for _, ctx, conts in todo])
                for (k, _, _), lp in zip(todo, scores):
                    cache.put(k, lp)
                    advance()
        # strict JSON stores a log-likelihood of -inf (an impossible continuation) as null
        return [[float("-inf") if x is None else x for x in cache.data[k]] for k in keys]

    def rate(self, requests: Sequence[tuple[str, str]], desc: str = "judge", temperature: float | None = None,
             max_tokens: int | None = None) -> list[Any]:
        """Judgments for ``(system, user)`` prompts through the configured judge (cached by the judge);
        ``temperature``/``max_tokens`` override the judge's own for these requests (a paper's settings)."""
        if self.judge_factory is None:
            raise EvalError(f"{self.metric} needs an LLM judge: pass --judge-model (and --judge-base-url for a "
                            f"local or non-OpenAI server); see `fedllm eval --help`")
        if self.judge is None:
            self.judge = self.judge_factory(self.out_dir / "judgments.jsonl")
        from fedllm.eval.judge import JudgeRequest

        reqs = [JudgeRequest(system=s, user=u, temperature=temperature, max_tokens=max_tokens) for s, u in requests]
        with self.progress(f"{self.target.label} {desc}", len(reqs)) as advance:
            return self.judge.rate(reqs, progress=lambda n=1: advance(n))

    def progress(self, desc: str, total: int) -> Any:
        """A progress bar on the evaluation's console (or ``bars``); yields advance(n)."""
        return self.bars(desc, total) if self.bars is not None else progress_bar(self.console, desc, total)


GLOBAL_OPTIONS = {"max_items", "max_new_tokens", "temperature"}


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that exist; None when there are none (never a sentinel number)."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
