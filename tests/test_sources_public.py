"""Builders of the published federations (FedLLM-Bench, FS-LLM) on small fixtures written in each
source's own schema: exact client/sample/drop counts, record contents, determinism, caching, and
the errors a user meets (hub unreachable, missing field, bad encoding). No network."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedllm.data.fedllm_bench import read_fedllm_bench
from fedllm.data.schema import DataError, InstructionSample, PreferenceSample
from fedllm.data.sources import SOURCES, get_source, load_dataset
from fedllm.data.sources import hub
from fedllm.data.sources.fs_llm import classify_language

PUBLIC = (
    "fed-aya",
    "fed-chatbotit",
    "fed-chatbotpa",
    "fed-wildchat",
    "fed-wildchat-mt",
    "fed-dolly",
    "fed-codealpaca",
    "fed-gsm8k-3",
    "fed-codesearchnet",
)

# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# --------------------------------------------------------------------------------------------
# Fixtures in the sources' schemas
# --------------------------------------------------------------------------------------------


def aya_rows() -> list[dict[str, Any]]:
    def r(user: str, lang: str, i: int, targets: str | None = None) -> dict[str, Any]:
        return {"inputs": f"{user} asks {i} in {lang}", "targets": targets if targets is not None else f"answer {i}",
                "language": lang, "language_code": lang[:3].lower(), "annotation_type": "original-annotations",
                "user_id": user}

    rows = [r("u_big", "Telugu", i) for i in range(7)]
    rows += [r("u_at", "English", i) for i in range(3)] + [r("u_at", "French", i) for i in range(3, 5)]
    rows += [r("u_at", "German", i) for i in range(2)]  # language outside the 8
    rows += [r("u_below", "Simplified Chinese", i) for i in range(4)]  # one below min_samples=5
    rows += [r("u_big", "Egyptian Arabic", 99)]  # not "Standard Arabic"
    rows += [r("u_at", "English", 100, targets="  ")]  # blank target
    return rows  # 20 rows


def _arena(qid: str, judge: str, winner: str, n_turns: int = 1, same: bool = False) -> dict[str, Any]:
    def conv(model: str) -> list[dict[str, Any]]:
        turns = []
        for t in range(n_turns):
            turns.append({"content": f"{qid} question {t}", "role": "user"})
            reply = f"{qid} reply" if same else f"{qid} reply {t} by {model}"
            turns.append({"content": reply, "role": "assistant"})
        return turns

    return {"question_id": qid, "model_a": "vicuna-13b", "model_b": "koala-13b", "winner": winner, "judge": judge,
            "conversation_a": conv("a"), "conversation_b": conv("b"), "turn": n_turns, "anony": True,
            "language": "English", "tstamp": 1682351591.1322}


def arena_rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(10):  # exactly at the IT threshold of 10
        rows.append(_arena(f"at{i}", "j_at", "model_a" if i % 2 else "model_b"))
    rows.append(_arena("at_tie", "j_at", "tie"))
    for i in range(9):  # one below it
        rows.append(_arena(f"below{i}", "j_below", "model_a"))
    rows += [_arena("below_tie", "j_below", "tie (bothbad)"), _arena("below_tie2", "j_below", "tie")]
    for i in range(11):
        rows.append(_arena(f"big{i}", "j_big", "model_b"))
    rows.append(_arena("big_mt", "j_big", "model_a", n_turns=2))  # a two-turn battle
    for i in range(5):  # exactly at the PA threshold of 5 pairs
        rows.append(_arena(f"five{i}", "j_five", "model_a"))
    rows.append(_arena("five_same", "j_five", "model_b", same=True))  # identical replies: no preference
    for i in range(4):  # one below it
        rows.append(_arena(f"four{i}", "j_four", "model_b"))
    return rows  # 44 rows


def _wild(ip: str | None, texts: list[str], *, toxic: bool = False, ip_in_turns: bool = False,
          language: str = "English") -> dict[str, Any]:
    conv = []
    for k, text in enumerate(texts):
        turn = {"content": text, "role": "user" if k % 2 == 0 else "assistant", "language": language,
                "redacted": False, "toxic": toxic, "turn_identifier": 1000 + k}
        if ip_in_turns and k % 2 == 0:
            turn["hashed_ip"] = ip
        conv.append(turn)
    return {"conversation_hash": f"h-{ip}-{texts[0]}", "model": "gpt-3.5-turbo-0613", "conversation": conv,
            "turn": sum(1 for k in range(len(texts)) if k % 2 == 0), "language": language, "toxic": toxic,
            "redacted": False, "hashed_ip": None if ip_in_turns else ip, "country": "Utopia", "state": None}


def wildchat_rows() -> list[dict[str, Any]]:
    rows = [_wild("ip_a", [f"a{i}?", f"a{i}!"]) for i in range(3)]
    rows.append(_wild("ip_a", ["a-mt1?", "a-mt1!", "a-mt2?", "a-mt2!"]))  # two turns
    rows.append(_wild("ip_a", ["a-trail?", "a-trail!", "unanswered?"]))  # trailing user turn
    rows.append(_wild("ip_a", ["bad?", "bad!"], toxic=True))
    rows += [_wild("ip_b", [f"b{i}?", f"b{i}!"]) for i in range(4)]
    rows.append(_wild("ip_b", ["b-empty?", ""]))  # empty reply
    rows += [_wild("ip_c", [f"c{i}?", f"c{i}!"]) for i in range(2)]
    rows.append(_wild("ip_c", ["c-inner?", "c-inner!"], ip_in_turns=True))  # IP only inside the turns
    rows += [_wild("ip_d", [f"d{i}?", f"d{i}!"]) for i in range(2)]
    rows.append(_wild(None, ["anon?", "anon!"]))
    return rows  # 17 rows


def dolly_rows() -> list[dict[str, Any]]:
    rows = [{"instruction": f"Open question {i}?", "context": "", "response": f"Open answer {i}.",
             "category": "open_qa"} for i in range(3)]
    rows += [{"instruction": f"Closed question {i}?", "context": f"Context {i}, with a comma\nand a newline.",
              "response": f"Closed answer {i}.", "category": "closed_qa"} for i in range(2)]
    rows.append({"instruction": "List ideas.", "context": "", "response": "Ideas.", "category": "brainstorming"})
    rows.append({"instruction": "Summarise.", "context": "Text.", "response": "", "category": "summarization"})
    return rows  # 7 rows


CODEALPACA = [
    # (instruction, input, output, expected language or drop reason)
    ("Write a Python function to add two numbers.", "", "def add(a, b):\n    return a + b", "Python"),
    ("Create a function that reverses a list.", "", "def rev(xs):\n    return xs[::-1]", "Python"),
    ("Print hello.", "", 'public class Main {\n  public static void main(String[] a) {\n    System.out.println("hi");\n  }\n}', "Java"),
    ("Print hello world.", "", '#include <iostream>\nint main() { std::cout << "hi"; }', "C++"),
    ("Print a number.", "", '#include <stdio.h>\nint main() { printf("%d", 1); }', "C"),
    ("Log a message.", "", 'console.log("hi");', "JavaScript"),
    ("Translate this Python code to Java.", "print(1)", "System.out.println(1);", "Java"),
    ("Write a query to select all users.", "", "SELECT * FROM users;", "language_not_selected"),
    ("What is a closure?", "", "A closure is a function with its environment.", "none_language"),
    ("Compare Python and Java.", "", "They differ in typing.", "ambiguous_language"),
    ("Write assembly that exits.", "", "mov rax, 60\nsyscall", "excluded_language"),
    ("Sum a list in Ruby.", "[1, 2]", "puts [1, 2].sum", "Ruby"),
    ("Empty output.", "", "   ", "empty_text"),
]


def codealpaca_rows() -> list[dict[str, Any]]:
    return [{"instruction": i, "input": x, "output": o} for i, x, o, _ in CODEALPACA]


def rosetta_rows() -> list[dict[str, Any]]:
    rows = [{"instruction": f"Task {i}", "input": "Python", "output": f"print({i})"} for i in range(3)]
    rows += [{"instruction": f"Task {i}", "input": "Go", "output": f"fmt.Println({i})"} for i in range(2)]
    rows.append({"instruction": "Task x", "input": "X86-64 Assembly", "output": "mov rax, 60"})
    rows.append({"instruction": "Task y", "input": "", "output": "?"})
    return rows  # 7 rows


def gsm8k_rows() -> list[dict[str, Any]]:
    return [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(10)]


def csn_rows() -> list[dict[str, Any]]:
    def r(lang: str, i: int, doc: str | None = None) -> dict[str, Any]:
        return {"repository_name": "o/r", "func_path_in_repository": f"f{i}", "func_name": f"fn{i}",
                "whole_func_string": f"code {lang} {i}", "language": lang, "func_code_string": f"code {lang} {i}",
                "func_code_tokens": ["code"], "func_documentation_string": doc if doc is not None else f"Does {i}.",
                "func_documentation_tokens": ["Does"], "split_name": "train", "func_code_url": "https://x"}

    rows = [r("python", i) for i in range(5)] + [r("go", i) for i in range(3)] + [r("ruby", 0)]
    rows += [r("haskell", 0), r("python", 9, doc="")]
    return rows  # 11 rows


# Per builder: (fixture writer into tmp_path, build kwargs for the test, expected {client: n} in file order,
# expected dropped_rows, expected dropped_clients)
WILDCHAT_EXPECTED = (
    {"min_samples": 3, "max_clients": 2},
    {"ip_a": 5, "ip_b": 4},
    {"toxic": 1, "empty_text": 1, "no_hashed_ip": 1},
    {"below_min_samples_3": {"clients": 1, "samples": 2}, "beyond_max_clients_2": {"clients": 1, "samples": 3}},
)
Case = tuple[Callable[[Path], Any], dict[str, Any], dict[str, int], dict[str, int], dict[str, dict[str, int]]]
CASES: dict[str, Case] = {
    "fed-aya": (
        lambda d: write_jsonl(d / "aya.jsonl", aya_rows()),
        {"min_samples": 5},
        {"u_big": 7, "u_at": 5},
        {"language_not_selected": 3, "empty_text": 1},
        {"below_min_samples_5": {"clients": 1, "samples": 4}},
    ),
    "fed-chatbotit": (
        lambda d: write_parquet(d / "train-00000-of-00001.parquet", arena_rows()),
        {},
        {"j_big": 12, "j_at": 10},
        {"tie": 3},
        {"below_min_samples_10": {"clients": 3, "samples": 19}},
    ),
    "fed-chatbotpa": (
        lambda d: write_parquet(d / "train-00000-of-00001.parquet", arena_rows()),
        {},
        {"j_big": 12, "j_at": 10, "j_below": 9, "j_five": 5},
        {"tie": 3, "identical_responses": 1},
        {"below_min_samples_5": {"clients": 1, "samples": 4}},
    ),
    # the same conversations make as many single- as multi-turn samples (one per conversation)
    "fed-wildchat": (lambda d: write_jsonl(d / "wildchat.jsonl", wildchat_rows()), *WILDCHAT_EXPECTED),
    "fed-wildchat-mt": (lambda d: write_parquet(d / "wildchat.parquet", wildchat_rows()), *WILDCHAT_EXPECTED),
    "fed-dolly": (
        lambda d: write_csv(d / "dolly.csv", dolly_rows()),
        {"min_samples": 2},
        {"open_qa": 3, "closed_qa": 2},
        {"empty_text": 1},
        {"below_min_samples_2": {"clients": 1, "samples": 1}},
    ),
    "fed-codealpaca": (
        lambda d: (d / "code_alpaca_20k.json").write_text(json.dumps(codealpaca_rows()), encoding="utf-8")
        and d / "code_alpaca_20k.json",
        {},
        {"Java": 2, "Python": 2, "C": 1, "C++": 1, "JavaScript": 1, "Ruby": 1},
        {"language_not_selected": 1, "none_language": 1, "ambiguous_language": 1, "excluded_language": 1,
         "empty_text": 1},
        {},
    ),
    "fed-gsm8k-3": (
        lambda d: write_parquet(d / "gsm8k.parquet", gsm8k_rows()),
        {},
        {"client_0": 4, "client_1": 3, "client_2": 3},
        {},
        {},
    ),
    "fed-codesearchnet": (
        lambda d: _write_gz_jsonl(d / "csn.jsonl.gz", csn_rows()),
        {"max_samples_per_client": 2, "min_samples": 2},
        {"python": 2, "go": 2},
        {"language_not_selected": 1, "empty_text": 1, "over_client_cap": 4},
        {"below_min_samples_2": {"clients": 1, "samples": 1}},
    ),
}


def _write_gz_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return path


def build(name: str, cache: Path, data: Any, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    path = get_source(name).build(cache, data_files=data, progress=False, **kwargs)
    return path, json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Every test here runs offline: reaching for the hub fails loudly."""
    import datasets

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


# --------------------------------------------------------------------------------------------
# Every builder: counts, drops, determinism, cache
# --------------------------------------------------------------------------------------------


def test_all_public_sources_registered():
    assert set(PUBLIC) <= set(SOURCES)
    for name in PUBLIC:
        src = get_source(name)
        assert {"data_files", "revision", "split", "hub_id", "progress"} <= set(src.default_kwargs)
        assert src.description


@pytest.mark.parametrize("name", PUBLIC)
def test_build_counts_drops_determinism_and_cache(name, tmp_path, monkeypatch):
    write, kwargs, clients, dropped_rows, dropped_clients = CASES[name]
    (tmp_path / "in").mkdir()
    data = write(tmp_path / "in")
    path, man = build(name, tmp_path / "c1", data, **kwargs)

    assert path.name == f"{name}.json" and path.parent.parent == tmp_path / "c1" / "datasets" / name
    read = read_fedllm_bench(path)
    assert {c: len(s) for c, s in read.items()} == clients
    assert list(read) == list(clients)  # ordered by size, then id
    assert man["num_clients"] == len(clients) and man["num_samples"] == sum(clients.values())
    assert {c: v["num_samples"] for c, v in man["clients"].items()} == clients
    assert man["dropped_rows"] == dropped_rows
    assert man["dropped_clients"] == dropped_clients
    # nothing silently lost: every row is a sample or counted as dropped
    lost = sum(dropped_rows.values()) + sum(v["samples"] for v in dropped_clients.values())
    assert man["num_rows_read"] == man["num_samples"] + lost
    assert man["source"]["data_files"][0]["sha256"] and man["source"]["schema_of"] == get_source(name).hub_id
    assert man["params"] == {k: v if not isinstance(v, tuple) else list(v)
                             for k, v in get_source(name).content_params(get_source(name).resolve_kwargs(kwargs)).items()}

    # determinism: a second cache gets byte-identical files
    path2, _ = build(name, tmp_path / "c2", data, **kwargs)
    assert path2.read_bytes() == path.read_bytes()
    assert (path2.parent / "manifest.json").read_bytes() == (path.parent / "manifest.json").read_bytes()

    # reuse: same arguments and input -> no reading at all
    src = get_source(name)
    assert src.is_built(tmp_path / "c1", data_files=data, **kwargs)
    monkeypatch.setattr(hub, "iter_rows", lambda *a, **k: pytest.fail("rebuilt a cached dataset"))
    assert build(name, tmp_path / "c1", data, **kwargs)[0] == path
    monkeypatch.undo()

    # the same content under another name is the same input (and hub_id does not key a local build);
    # another value of a content parameter is another build
    moved = data.with_name("renamed" + "".join(data.suffixes))
    moved.write_bytes(data.read_bytes())
    assert src.is_built(tmp_path / "c1", data_files=moved, **kwargs)
    assert src.is_built(tmp_path / "c1", data_files=data, **{**kwargs, "hub_id": "elsewhere/copy"})
    other = OTHER_PARAM[name]
    assert not src.is_built(tmp_path / "c1", data_files=data, **{**kwargs, **other})
    path3, _ = build(name, tmp_path / "c1", data, **{**kwargs, **other})
    assert path3.parent != path.parent and path.exists()


OTHER_PARAM = {
    "fed-aya": {"min_samples": 6},
    "fed-chatbotit": {"turns": "single"},
    "fed-chatbotpa": {"min_samples": 4},
    "fed-wildchat": {"turns": "single"},
    "fed-wildchat-mt": {"max_clients": 3},
    "fed-dolly": {"min_samples": 1},
    "fed-codealpaca": {"exclude_languages": ()},
    "fed-gsm8k-3": {"seed": 1},
    "fed-codesearchnet": {"seed": 1},
}


# --------------------------------------------------------------------------------------------
# Record contents and builder-specific rules
# --------------------------------------------------------------------------------------------


def test_aya_records_languages_and_default_threshold(tmp_path):
    path, man = build("fed-aya", tmp_path / "c", write_jsonl(tmp_path / "aya.jsonl", aya_rows()), min_samples=5)
    s = read_fedllm_bench(path)["u_at"][0]
    assert (s.instruction, s.response) == ("u_at asks 0 in English", "answer 0")
    assert man["clients"]["u_at"] == {"num_samples": 5, "languages": {"English": 3, "French": 2}}
    assert man["clients"]["u_big"]["languages"] == {"Telugu": 7}
    # the paper's threshold of 100: an annotator with exactly 100 kept, one with 99 dropped with counts
    rows = [{"inputs": f"q{i}", "targets": f"a{i}", "language": "Standard Arabic", "language_code": "arb",
             "annotation_type": "original-annotations", "user_id": "at100" if i < 100 else "at99"} for i in range(199)]
    path, man = build("fed-aya", tmp_path / "c", write_jsonl(tmp_path / "aya100.jsonl", rows))
    assert man["clients"] == {"at100": {"num_samples": 100, "languages": {"Standard Arabic": 100}}}
    assert man["dropped_clients"] == {"below_min_samples_100": {"clients": 1, "samples": 99}}
    assert man["params"]["languages"] == ["English", "Spanish", "French", "Russian", "Portuguese",
                                          "Simplified Chinese", "Standard Arabic", "Telugu"]
    # a language name that occurs nowhere is an error naming it, not an empty federation
    with pytest.raises(DataError, match=r"\['Klingon'\] do not occur"):
        build("fed-aya", tmp_path / "c", write_jsonl(tmp_path / "aya100.jsonl", rows), languages=["Klingon"])


def test_chatbot_it_takes_the_winners_reply(tmp_path):
    data = write_parquet(tmp_path / "arena.parquet", arena_rows())
    clients = read_fedllm_bench(build("fed-chatbotit", tmp_path / "c", data)[0])
    by_q = {s.instruction: s for c in clients.values() for s in c}
    assert by_q["at0 question 0"].response == "at0 reply 0 by b"  # winner model_b
    assert by_q["at1 question 0"].response == "at1 reply 0 by a"  # winner model_a
    assert by_q["big_mt question 0"].response == "big_mt reply 0 by a"  # first exchange of a 2-turn battle
    assert all(len(s.messages) == 2 for c in clients.values() for s in c)
    _, man = build("fed-chatbotit", tmp_path / "c", data, turns="single")
    assert man["clients"]["j_big"]["num_samples"] == 11 and man["dropped_rows"] == {"tie": 3, "multi_turn": 1}
    with pytest.raises(ValueError, match="turns must be one of"):
        build("fed-chatbotit", tmp_path / "c", data, turns="all")


def test_chatbot_pa_pairs_chosen_is_winner_rejected_is_loser(tmp_path):
    data = write_parquet(tmp_path / "arena.parquet", arena_rows())
    clients = read_fedllm_bench(build("fed-chatbotpa", tmp_path / "c", data)[0])
    pairs = {s.instruction: s for c in clients.values() for s in c}
    assert all(isinstance(s, PreferenceSample) for s in pairs.values())
    assert (pairs["at0 question 0"].chosen, pairs["at0 question 0"].rejected) == ("at0 reply 0 by b", "at0 reply 0 by a")
    assert (pairs["at1 question 0"].chosen, pairs["at1 question 0"].rejected) == ("at1 reply 0 by a", "at1 reply 0 by b")
    assert "five_same question 0" not in pairs and "at_tie question 0" not in pairs


def test_wildchat_single_and_multi_turn_samples(tmp_path):
    data = write_jsonl(tmp_path / "wc.jsonl", wildchat_rows())
    single = read_fedllm_bench(build("fed-wildchat", tmp_path / "c", data, min_samples=3, max_clients=2)[0])
    first = {s.instruction: s for s in single["ip_a"]}
    assert first["a-mt1?"].response == "a-mt1!" and len(first["a-mt1?"].messages) == 2
    assert "bad?" not in first  # toxic
    multi = read_fedllm_bench(build("fed-wildchat-mt", tmp_path / "c", data, min_samples=3, max_clients=2)[0])
    convs = {s.instruction: [m.content for m in s.messages] for s in multi["ip_a"]}
    assert convs["a-mt1?"] == ["a-mt1?", "a-mt1!", "a-mt2?", "a-mt2!"]
    assert convs["a-trail?"] == ["a-trail?", "a-trail!"]  # unanswered user turn cut
    # turns="single": conversations with turn > 1 left out (both two-user-turn ones of ip_a)
    _, man = build("fed-wildchat", tmp_path / "c", data, min_samples=3, max_clients=2, turns="single")
    assert man["dropped_rows"]["multi_turn"] == 2
    assert {c: v["num_samples"] for c, v in man["clients"].items()} == {"ip_b": 4, "ip_a": 3}
    # the IP hash inside the turns is used when the row has none; without max_clients ip_c stays
    _, man = build("fed-wildchat", tmp_path / "c", data, min_samples=3, max_clients=None)
    assert man["clients"]["ip_c"]["num_samples"] == 3
    # toxic conversations can be kept
    _, man = build("fed-wildchat", tmp_path / "c", data, min_samples=3, max_clients=2, drop_toxic=False)
    assert man["clients"]["ip_a"]["num_samples"] == 6 and "toxic" not in man["dropped_rows"]


def test_dolly_context_follows_instruction(tmp_path):
    clients = read_fedllm_bench(build("fed-dolly", tmp_path / "c", write_csv(tmp_path / "d.csv", dolly_rows()))[0])
    assert list(clients) == ["open_qa", "closed_qa", "brainstorming"]
    assert clients["closed_qa"][0].instruction == "Closed question 0?\n\nContext 0, with a comma\nand a newline."
    assert clients["open_qa"][0].instruction == "Open question 0?"


@pytest.mark.parametrize("instruction, extra, output, expected", [c[:3] + (c[3],) for c in CODEALPACA[:-1]])
def test_codealpaca_keyword_classifier(instruction, extra, output, expected):
    got = classify_language(instruction, extra, output)
    reason = {"none": "none_language", "ambiguous": "ambiguous_language", "SQL": "language_not_selected",
              "X86-64 Assembly": "excluded_language"}.get(got, got)
    assert reason == expected


def test_codealpaca_from_rosetta_input_field(tmp_path):
    data = tmp_path / "rosetta_alpaca.json"
    data.write_text(json.dumps(rosetta_rows()), encoding="utf-8")
    path, man = build("fed-codealpaca", tmp_path / "c", data, language_from="input")
    clients = read_fedllm_bench(path)
    assert {c: len(s) for c, s in clients.items()} == {"Python": 3, "Go": 2}
    assert man["dropped_rows"] == {"excluded_language": 1, "no_language": 1}
    assert clients["Python"][0].instruction == "Task 0\n\nPython"  # FS-LLM keeps the language as the input


def test_gsm8k_iid_split_is_a_seeded_partition(tmp_path):
    data = write_parquet(tmp_path / "g.parquet", gsm8k_rows())
    c0 = read_fedllm_bench(build("fed-gsm8k-3", tmp_path / "c", data)[0])
    c1 = read_fedllm_bench(build("fed-gsm8k-3", tmp_path / "c", data, seed=1)[0])
    qs = lambda cl: {c: [s.instruction for s in v] for c, v in cl.items()}  # noqa: E731
    assert sorted(q for v in qs(c0).values() for q in v) == sorted(r["question"] for r in gsm8k_rows())
    assert qs(c0) != qs(c1)
    for v in qs(c0).values():  # each client keeps source order
        assert v == sorted(v, key=lambda q: int(q.split()[2]))
    s = next(iter(c0.values()))[0]
    assert s.response.endswith("The answer is " + str(2 * int(s.instruction.split()[2]))) and "####" not in s.response
    raw = read_fedllm_bench(build("fed-gsm8k-3", tmp_path / "c", data, fs_llm_answer=False, num_clients=2)[0])
    assert len(raw) == 2 and "####" in raw["client_0"][0].response


def test_codesearchnet_prefix_and_cap(tmp_path):
    data = _write_gz_jsonl(tmp_path / "csn.jsonl.gz", csn_rows())
    path, man = build("fed-codesearchnet", tmp_path / "c", data, max_samples_per_client=None)
    clients = read_fedllm_bench(path)
    assert {c: len(s) for c, s in clients.items()} == {"python": 5, "go": 3, "ruby": 1}
    assert (clients["python"][0].instruction, clients["python"][0].response) == ("python Does 0.", "code python 0")
    path, man = build("fed-codesearchnet", tmp_path / "c", data, max_samples_per_client=2)
    capped = read_fedllm_bench(path)
    assert man["clients"]["python"] == {"num_samples": 2, "available": 5}
    got = [s.response for s in capped["python"]]
    assert set(got) <= {s.response for s in clients["python"]} and got == sorted(got)  # source order


# --------------------------------------------------------------------------------------------
# Inputs: formats, errors
# --------------------------------------------------------------------------------------------


def test_save_to_disk_and_snapshot_folders(tmp_path):
    import datasets

    rows = aya_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:3])}).save_to_disk(str(tmp_path / "saved_dict"))
    snap = tmp_path / "snapshot" / "data"
    snap.mkdir(parents=True)
    write_parquet(snap / "train-00000-of-00001.parquet", rows)
    write_parquet(snap / "test-00000-of-00001.parquet", rows[:3])
    expected = {"u_big": 7, "u_at": 5}
    for data in (tmp_path / "saved", tmp_path / "saved_dict", tmp_path / "snapshot"):
        _, man = build("fed-aya", tmp_path / "c", data, min_samples=5)
        assert {c: v["num_samples"] for c, v in man["clients"].items()} == expected, data
    with pytest.raises(DataError, match="no split 'validation'"):
        build("fed-aya", tmp_path / "c", tmp_path / "saved_dict", min_samples=5, split="validation")
    with pytest.raises(DataError, match="no file of split 'validation'"):
        build("fed-aya", tmp_path / "c", tmp_path / "snapshot", min_samples=5, split="validation")
    # several files are read in the order given
    a, b = write_jsonl(tmp_path / "a.jsonl", rows[:10]), write_jsonl(tmp_path / "b.jsonl", rows[10:])
    _, man = build("fed-aya", tmp_path / "c", [a, b], min_samples=5)
    assert {c: v["num_samples"] for c, v in man["clients"].items()} == expected
    assert [f["path"] for f in man["source"]["data_files"]] == [str(a), str(b)]


def test_hub_unreachable_says_how_to_use_local_files(tmp_path, monkeypatch):
    import datasets

    def offline(*a: Any, **k: Any) -> Any:
        raise ConnectionError("Couldn't reach 'CohereForAI/aya_dataset' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        get_source("fed-aya").build(tmp_path, progress=False)
    msg = str(e.value)
    assert "fed-aya: cannot reach the Hugging Face hub" in msg and "CohereForAI/aya_dataset" in msg
    assert "data_files=" in msg and "save_to_disk" in msg
    assert not (tmp_path / "datasets" / "fed-aya").exists() or not any((tmp_path / "datasets" / "fed-aya").iterdir())


def test_hub_path_reads_through_datasets(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake(path: str, **kw: Any) -> Any:
        calls.append((path, kw))
        return datasets.Dataset.from_list(gsm8k_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake)
    path, man = build("fed-gsm8k-3", tmp_path / "c", None, revision="abc123")
    assert calls == [("openai/gsm8k", {"name": "main", "split": "train", "revision": "abc123"})]
    assert man["source"] == {"hub_id": "openai/gsm8k", "config": "main", "split": "train", "revision": "abc123"}
    assert man["num_samples"] == 10
    assert get_source("fed-gsm8k-3").is_built(tmp_path / "c", revision="abc123")
    assert not get_source("fed-gsm8k-3").is_built(tmp_path / "c", revision="def456")


def test_is_built_is_offline_and_false_when_nothing_is_built(tmp_path):
    for name in PUBLIC:
        src = get_source(name)
        assert src.is_built(tmp_path, **src.default_kwargs) is False
        assert src.is_built(tmp_path, data_files=tmp_path / "missing.jsonl") is False


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet, write_csv])
def test_missing_field_names_field_and_source(tmp_path, writer):
    rows = [{k: v for k, v in r.items() if k != "user_id"} for r in aya_rows()]
    data = writer(tmp_path / f"aya{ {write_jsonl: '.jsonl', write_parquet: '.parquet', write_csv: '.csv'}[writer]}", rows)
    with pytest.raises(DataError) as e:
        build("fed-aya", tmp_path / "c", data)
    assert "fed-aya" in str(e.value) and "'user_id'" in str(e.value) and str(data) in str(e.value)


def test_wrong_field_type_is_a_data_error(tmp_path):
    rows = aya_rows()
    rows[3]["targets"] = 42
    with pytest.raises(DataError, match=r"fed-aya: .*aya.jsonl:4: field 'targets' must be a string, got int"):
        build("fed-aya", tmp_path / "c", write_jsonl(tmp_path / "aya.jsonl", rows), min_samples=5)


def test_non_utf8_file_is_a_clear_error(tmp_path):
    data = tmp_path / "aya.jsonl"
    write_jsonl(data, aya_rows())
    data.write_bytes(data.read_bytes().replace("Telugu".encode(), "Telugu é".encode("latin-1"), 1))
    with pytest.raises(DataError, match=r"fed-aya: .*aya.jsonl: not valid UTF-8: undecodable byte 0xe9 .* \(line 1\)"):
        build("fed-aya", tmp_path / "c", data)


def test_broken_and_unsupported_inputs(tmp_path):
    bad = tmp_path / "aya.jsonl"
    bad.write_text('{"inputs": "x"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"aya.jsonl:1: invalid JSON Lines record"):
        build("fed-aya", tmp_path / "c", bad)
    txt = tmp_path / "aya.txt"
    txt.write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type"):
        build("fed-aya", tmp_path / "c", txt)
    with pytest.raises(DataError, match="does not exist"):
        build("fed-aya", tmp_path / "c", tmp_path / "nope.parquet")
    with pytest.raises(TypeError, match="no build option"):
        build("fed-aya", tmp_path / "c", bad, min_sample=3)


def test_no_client_left_is_an_error_with_counts(tmp_path):
    with pytest.raises(DataError, match=r"fed-aya: no client passes the filters \(read 20 rows\).*below_min_samples_100"):
        build("fed-aya", tmp_path / "c", write_jsonl(tmp_path / "aya.jsonl", aya_rows()))


def test_build_prints_counts(tmp_path, capsys):
    get_source("fed-chatbotpa").build(tmp_path, data_files=write_parquet(tmp_path / "a.parquet", arena_rows()))
    err = capsys.readouterr().err
    assert "fed-chatbotpa: 4 clients, 36 samples (from 44 rows)" in err
    assert "j_big" in err and "below_min_samples_5: 1 clients / 4 samples" in err and "tie=3" in err
    get_source("fed-chatbotpa").build(tmp_path, data_files=tmp_path / "a.parquet")
    assert "using cached build" in capsys.readouterr().err


def test_load_dataset_through_the_registry(tmp_path):
    data = write_jsonl(tmp_path / "aya.jsonl", aya_rows())
    fed = load_dataset("fed-aya", cache_dir=tmp_path, data_files=data, min_samples=5, progress=False, test_fraction=0.2)
    assert fed.client_ids == ["u_big", "u_at"] and fed.meta["source_name"] == "fed-aya"
    assert fed["u_at"].num_train + len(fed["u_at"].test) == 5
    assert isinstance(fed["u_at"].train[0], InstructionSample)


def test_two_pass_builder_loads_the_hub_once(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake(path: str, **kw: Any) -> Any:
        calls.append(path)
        return datasets.Dataset.from_list(wildchat_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake)
    _, man = build("fed-wildchat-mt", tmp_path / "c", None, min_samples=3, max_clients=2)
    assert calls == ["allenai/WildChat-1M"] and man["num_rows_read"] == 17
    assert {c: v["num_samples"] for c, v in man["clients"].items()} == {"ip_a": 5, "ip_b": 4}
