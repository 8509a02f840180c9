"""HumanEval (Chen et al. 2021): pass@1 and pass@k from n samples per problem (unbiased estimator).

The model answers a chat prompt with the function; the code block is extracted and run with the
problem's tests in a sandboxed subprocess (time and memory limits, no network, a temporary
directory, its process group killed afterwards), because model-written code is untrusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

from fedllm.eval import humaneval as he
from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.metrics import register_metric
from fedllm.eval.sandbox import ExecResult
from fedllm.jsonl import JsonlCache


@register_metric
class HumanEval:
    name: ClassVar[str] = "humaneval"
    columns: ClassVar[tuple[str, ...]] = ("humaneval",)
    needs_judge: ClassVar[bool] = False
    description: ClassVar[str] = "HumanEval pass@1 (%) (and pass@k with --set humaneval.n=N), sandboxed execution"

    def run(self, ctx: EvalContext) -> MetricResult:
        path = ctx.option("problems", "")
        problems = ctx.subset(he.load_problems(Path(path) if path else None))
        n = ctx.option("n", 1)
        # greedy for a single sample; sampling (Codex paper: T=0.8 for large k) when estimating pass@k
        d = ctx.decoding(temperature=0.0 if n == 1 else 0.8, max_new_tokens=384, top_p=0.95 if n > 1 else 1.0)
        # an answer ends once the code block that is scored is closed (--set humaneval.whole_answers=true: at the
        # model's end of text or max_new_tokens, for reading what it says after the code)
        whole = ctx.option("whole_answers", False)
        samples = [(p, j) for p in problems for j in range(n)]
        outputs = ctx.generate([(f"humaneval/{p.task_id}/{j}", ctx.prompt([{"role": "user", "content": he.chat_prompt(p)}]),
                                 d if whole else replace(d, end_after_block_defining=p.entry_point)) for p, j in samples],
                               desc="humaneval")
        codes = [he.extract_code(out, p) for out, (p, _) in zip(outputs, samples)]
        completions: dict[str, list[str]] = {}
        for (p, _), code in zip(samples, codes):
            completions.setdefault(p.task_id, []).append(code)
        ks = sorted({1, *[int(k) for k in str(ctx.option("k", "1")).split(",")]})
        timeout_s = float(ctx.option("timeout_s", 10.0))
        with ctx.progress(f"{ctx.target.label} humaneval tests", len(samples)) as advance:
            scored = he.evaluate(problems, completions, ks=ks, timeout_s=timeout_s, workers=int(ctx.option("workers", 2)),
                                 run=_cached_check(JsonlCache(ctx.out_dir / "executions.jsonl"), timeout_s, advance))
        results = [r for p in problems for r in scored["results"][p.task_id]]
        items = [{"task_id": p.task_id, "sample": j, "status": r.status, "passed": r.passed, "output": out, "code": code,
                  "stderr": r.stderr} for (p, j), out, code, r in zip(samples, outputs, codes, results)]
        columns = {("humaneval" if k == 1 else f"humaneval@{k}"): 100.0 * scored[f"pass@{k}"]
                   for k in ks if f"pass@{k}" in scored}
        statuses: dict[str, int] = {}
        for r in results:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        summary = {"problems": len(problems), "samples_per_problem": n, "statuses": statuses, "decoding": d.__dict__, "whole_answers": whole,
                   "network_isolated": all(r.network_isolated for r in results)}
        return MetricResult(columns, summary, items)


def _cached_check(cache: JsonlCache, timeout_s: float, advance: Callable[[], None]) -> Callable[[he.Problem, str], ExecResult]:
    """``check`` through a per-code cache: a resumed evaluation does not run finished programs again."""

    def run(problem: he.Problem, code: str) -> ExecResult:
        key = f"{problem.task_id}|{hashlib.sha256(code.encode()).hexdigest()[:16]}|{timeout_s}"
        if key not in cache:
            r = he.check(problem, code, timeout_s=timeout_s)
            cache.put(key, {"status": r.status, "seconds": r.seconds, "stderr": r.stderr[-800:],
                            "network_isolated": r.network_isolated})
        rec = cache.data[key]
        advance()
        return ExecResult(rec["status"], None, rec["seconds"], "", rec["stderr"], rec["network_isolated"])

    return run
