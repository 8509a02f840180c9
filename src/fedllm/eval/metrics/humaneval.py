"""HumanEval (Chen et al. 2021): pass@1 and pass@k from n samples per problem (unbiased estimator).

The model answers a chat prompt with the function; the code block is extracted and run with the
problem's tests in a sandboxed subprocess (time and memory limits, no network, a temporary
directory, its process group killed afterwards), because model-written code is untrusted.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

from fedllm.eval import humaneval as he
from fedllm.eval.context import EvalContext, MetricResult
from fedllm.eval.metrics import register_metric
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
        reqs = [(f"humaneval/{p.task_id}/{j}", ctx.prompt([{"role": "user", "content": he.chat_prompt(p)}]), d)
                for p in problems for j in range(n)]
        outputs = ctx.generate(reqs, desc="humaneval")
        codes = [he.extract_code(out, p) for out, p in zip(outputs, (p for p in problems for _ in range(n)))]
        results = self._execute(ctx, [p for p in problems for _ in range(n)], codes, float(ctx.option("timeout_s", 10.0)))
        items, per_task = [], {}
        for (key, _, _), p, out, code, res in zip(reqs, (p for p in problems for _ in range(n)), outputs, codes, results):
            items.append({"task_id": p.task_id, "sample": int(key.rsplit("/", 1)[1]), "status": res["status"],
                          "passed": res["status"] == "passed", "output": out, "code": code, "stderr": res["stderr"]})
            per_task.setdefault(p.task_id, []).append(res["status"] == "passed")
        ks = sorted({1, *[int(k) for k in str(ctx.option("k", "1")).split(",")]})
        columns: dict[str, float | None] = {}
        for k in ks:
            if k <= n and per_task:
                columns["humaneval" if k == 1 else f"humaneval@{k}"] = 100.0 * sum(
                    he.pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)
        statuses: dict[str, int] = {}
        for it in items:
            statuses[it["status"]] = statuses.get(it["status"], 0) + 1
        summary = {"problems": len(problems), "samples_per_problem": n, "statuses": statuses, "decoding": d.__dict__,
                   "network_isolated": all(r.get("network_isolated", False) for r in results)}
        return MetricResult(columns, summary, items)

    @staticmethod
    def _execute(ctx: EvalContext, problems: list[he.Problem], codes: list[str], timeout_s: float) -> list[dict]:
        """Run each completion's tests (cached per code text, two at a time)."""
        cache = JsonlCache(ctx.out_dir / "executions.jsonl")
        keys = [f"{p.task_id}|{hashlib.sha256(c.encode()).hexdigest()[:16]}|{timeout_s}" for p, c in zip(problems, codes)]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            with ctx.progress(f"{ctx.target.label} humaneval tests", len(todo)) as advance:
                def run_one(i: int) -> None:
                    r = he.check(problems[i], codes[i], timeout_s=timeout_s)
                    cache.put(keys[i], {"status": r.status, "seconds": r.seconds, "stderr": r.stderr[-800:],
                                        "network_isolated": r.network_isolated})
                    advance()

                with ThreadPoolExecutor(max_workers=int(ctx.option("workers", 2))) as pool:
                    list(pool.map(run_one, todo))
        return [cache.data[k] for k in keys]
