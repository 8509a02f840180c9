"""FedLLM-Bench format: record kinds, round trip, seeded split, error locations, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedllm.data import fedllm_bench
from fedllm.data.fedllm_bench import (
    load_fedllm_bench,
    parse_record,
    read_fedllm_bench,
    split_client,
    write_fedllm_bench,
)
from fedllm.data.schema import DataError, InstructionSample, Message, PreferenceSample


def _write(tmp_path: Path, obj: object, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _parse(record: object) -> object:
    return parse_record(record, file="f.json", client="c", index=0)


# ---------------------------------------------------------------------------------- records


def test_single_turn_with_input_and_system() -> None:
    s = _parse({"instruction": "Sum these.", "input": "1 2", "response": "3", "system": "Be terse.", "extra": 1})
    assert s == InstructionSample(
        (Message("system", "Be terse."), Message("user", "Sum these.\n\n1 2"), Message("assistant", "3"))
    )
    assert _parse({"instruction": "a", "input": "  ", "response": "b"}) == InstructionSample.single_turn("a", "b")
    assert _parse({"instruction": "a", "output": "b"}) == InstructionSample.single_turn("a", "b")


@pytest.mark.parametrize(
    "turns",
    [
        [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}, {"from": "human", "value": "more"}, {"from": "gpt", "value": "ok"}],
        [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}, {"from": "user", "value": "more"}, {"from": "assistant", "value": "ok"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}],
    ],
)
def test_multi_turn_variants(turns: list[dict[str, str]]) -> None:
    s = _parse({"conversations": turns, "id": "x"})
    assert isinstance(s, InstructionSample)
    assert [m.role for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert [m.content for m in s.messages] == ["hi", "hello", "more", "ok"]


def test_multi_turn_system() -> None:
    turns = [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert _parse({"conversations": turns}).messages[0] == Message("system", "sys")
    plain = {"conversations": turns[1:], "system": "top"}
    assert _parse(plain).messages[0] == Message("system", "top")


def test_preference() -> None:
    assert _parse({"prompt": "Which?", "chosen": "A", "rejected": "B"}) == PreferenceSample(
        (Message("user", "Which?"),), "A", "B"
    )
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]
    s = _parse({"prompt": turns, "chosen": "A", "rejected": "B"})
    assert [m.role for m in s.prompt] == ["user", "assistant", "user"] and s.instruction == "q2"


def test_json_list_form_uses_file_stem(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"instruction": "a", "response": "b"}] * 3, "client_7.json")
    ds = load_fedllm_bench(path, test_fraction=0)
    assert ds.client_ids == ["client_7"] and ds["client_7"].num_train == 3


def test_load_meta_and_max_clients(tmp_path: Path) -> None:
    path = _write(tmp_path, {f"c{i}": [{"instruction": f"q{j}", "response": "r"} for j in range(10)] for i in range(4)})
    ds = load_fedllm_bench(path, name="toy", test_fraction=0.2, seed=3, max_clients=2)
    assert ds.name == "toy" and ds.client_ids == ["c0", "c1"]
    c = ds["c0"]
    assert c.meta["num_samples"] == 10 and (c.num_train, len(c.test)) == (8, 2)
    assert ds.meta["source"] == str(path)
    assert {k: ds.meta[k] for k in ("test_fraction", "seed", "min_test", "max_clients")} == {
        "test_fraction": 0.2, "seed": 3, "min_test": 1, "max_clients": 2
    }


# ---------------------------------------------------------------------------------- round trip


def _mixed_clients() -> dict[str, list]:
    return {
        "single": [InstructionSample.single_turn(f"Question {i} — ünïcødé ✓", f"Answer {i}\n\n```x```") for i in range(5)],
        "multi": [
            InstructionSample.single_turn("q", "a", system="You are helpful."),
            InstructionSample(tuple(Message(r, f"{r} {i}") for i, r in enumerate(["user", "assistant"] * 3))),
            InstructionSample((Message("system", ""), Message("user", "u"), Message("assistant", "a"))),
        ],
        "pref": [
            PreferenceSample((Message("user", "p"),), "good", "bad"),
            PreferenceSample((Message("system", "s"), Message("user", "p")), "good", "bad"),
        ],
    }


def test_round_trip(tmp_path: Path) -> None:
    clients = _mixed_clients()
    path = write_fedllm_bench(clients, tmp_path / "sub" / "out.json")
    assert read_fedllm_bench(path) == clients
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert set(raw["single"][0]) == {"instruction", "response"}
    assert "conversations" in raw["multi"][0] and set(raw["pref"][0]) == {"prompt", "chosen", "rejected"}
    assert "ünïcødé" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    ds = load_fedllm_bench(path, test_fraction=0)
    assert [ds[c].train for c in ds] == list(clients.values())


# ---------------------------------------------------------------------------------- split


def test_split_disjoint_covering_and_stable() -> None:
    samples = [InstructionSample.single_turn(f"q{i}", "r") for i in range(50)]
    train, test = split_client(samples, client_id="a", test_fraction=0.1, seed=0)
    assert len(test) == 5 and len(train) == 45
    assert sorted(train + test, key=samples.index) == samples  # covering
    assert not {id(s) for s in train} & {id(s) for s in test}  # disjoint
    assert train == [s for s in samples if s in train]  # original order kept
    assert (train, test) == split_client(samples, client_id="a", test_fraction=0.1, seed=0)
    assert test != split_client(samples, client_id="a", test_fraction=0.1, seed=1)[1]
    assert test != split_client(samples, client_id="b", test_fraction=0.1, seed=0)[1]


def test_split_small_clients_and_no_test() -> None:
    one = [InstructionSample.single_turn("q", "r")]
    assert split_client(one, client_id="a") == (one, [])
    two = [InstructionSample.single_turn(f"q{i}", "r") for i in range(2)]
    assert [len(x) for x in split_client(two, client_id="a")] == [1, 1]
    assert [len(x) for x in split_client(two * 3, client_id="a", min_test=6)] == [6, 0]
    assert [len(x) for x in split_client(two * 3, client_id="a", test_fraction=0)] == [6, 0]
    with pytest.raises(ValueError):
        split_client(two, client_id="a", test_fraction=1.0)


def test_split_stable_across_processes(tmp_path: Path) -> None:
    path = _write(tmp_path, {"x": [{"instruction": f"q{i}", "response": "r"} for i in range(40)]})
    code = (
        "import sys; from fedllm.data.fedllm_bench import load_fedllm_bench;"
        "print([s.instruction for s in load_fedllm_bench(sys.argv[1], test_fraction=0.25, seed=7)['x'].test])"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": h}).stdout
        for h in ("1", "2")
    }
    here = str([s.instruction for s in load_fedllm_bench(path, test_fraction=0.25, seed=7)["x"].test])
    assert outs == {here + "\n"}
    # Pinned: a change here silently changes every published split.
    assert here == "['q6', 'q9', 'q11', 'q19', 'q20', 'q25', 'q30', 'q32', 'q35', 'q39']"


# ---------------------------------------------------------------------------------- errors

GOOD = '{"instruction": "q", "response": "r"}'

MALFORMED = {
    "missing field": ('{"c1": [%s, {"instruction": "q"}]}' % GOOD, "c1", 1, "missing field 'response'"),
    "wrong type": ('{"c1": [{"instruction": ["q"], "response": "r"}]}', "c1", 0, "must be a string, got list"),
    "record not an object": ('{"c1": [%s, %s, "text"]}' % (GOOD, GOOD), "c1", 2, "must be a JSON object"),
    "unknown kind": ('{"c1": [{"text": "x"}]}', "c1", 0, "unknown record kind"),
    "empty conversation": ('{"c1": [{"conversations": []}]}', "c1", 0, "empty conversation"),
    "not alternating": (
        '{"c1": [{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]}]}',
        "c1", 0, "turns do not alternate: a user turn follows a user turn (expected an assistant turn)",
    ),
    "only an assistant turn": ('{"c1": [{"conversations": [{"from": "gpt", "value": "a"}]}]}', "c1", 0,
                               "has no user turn answered by the assistant"),
    "two assistant turns": (
        '{"c1": [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, '
        '{"from": "gpt", "value": "c"}]}]}', "c1", 0, "an assistant turn follows an assistant turn"),
    "late system turn": (
        '{"c1": [{"conversations": [{"from": "human", "value": "a"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "b"}]}]}',
        "c1", 0, "system turn may only open",
    ),
    "unknown speaker": ('{"c1": [{"conversations": [{"from": "bot", "value": "a"}]}]}', "c1", 0, "unknown speaker 'bot'"),
    "preference prompt ends with assistant": (
        '{"c1": [{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chosen": "x", "rejected": "y"}]}',
        "c1", 0, "must end with a turn by the user",
    ),
    "preference missing rejected": ('{"c1": [{"prompt": "p", "chosen": "x"}]}', "c1", 0, "missing field 'rejected'"),
    "mixed kinds": ('{"c1": [%s, {"prompt": "p", "chosen": "x", "rejected": "y"}]}' % GOOD, "c1", 1, "mixed sample kinds"),
    "invalid JSON in record": ('{"c0": [%s],\n "c1": [%s,\n {"instruction": "q" "response": "r"}]}' % (GOOD, GOOD), "c1", 1, "invalid JSON at line 3, column 22"),
    "missing comma between records": ('{"c1": [%s\n %s]}' % (GOOD, GOOD), "c1", 1, "invalid JSON at line 2, column 2"),
    "truncated file": ('{"c1": [%s, {"instr' % GOOD, "c1", 1, "invalid JSON at line 1"),
}


def _assert_load_fails(path: Path, data: str | bytes, client: str | None, index: int | None, what: str) -> None:
    """Loading `data` from `path` raises a DataError naming the file (and client, record) and `what`."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(DataError) as exc:
        load_fedllm_bench(path)
    msg = str(exc.value)
    assert str(path) in msg and what in msg, msg
    if client is not None:
        assert f"client {client!r}" in msg, msg
    if index is not None:
        assert f"record {index}" in msg, msg


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_records_name_file_client_index(tmp_path: Path, case: str) -> None:
    _assert_load_fails(tmp_path / "bad.json", *MALFORMED[case])


def test_non_utf8_names_byte_offset(tmp_path: Path) -> None:
    data = ('{"c1": [%s,\n {"instruction": "q' % GOOD).encode() + b"\xff\xfe" + b'", "response": "r"}]}'
    offset = data.index(b"\xff")
    _assert_load_fails(tmp_path / "bytes.json", data, "c1", 1, f"not valid UTF-8: undecodable byte at byte offset {offset}")


@pytest.mark.parametrize(
    "text, client, what",
    [
        ('{"c1": [%s], "c2": []}' % GOOD, "c2", "empty client (0 records)"),
        ('{"c1": [%s], "c1": [%s]}' % (GOOD, GOOD), "c1", "duplicate client id"),
        ('{"c1": {"a": 1}}', "c1", "must be a JSON list"),
        ("{}", None, "no clients"),
        ("42", None, "top level must be an object"),
        ("", None, "empty file"),
        ('{"c1": [%s]} []' % GOOD, None, "extra data"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, client: str | None, what: str) -> None:
    _assert_load_fails(tmp_path / "bad.json", text, client, None, what)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such"):
        load_fedllm_bench(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------- lone surrogates

# JSON text holding the escape \ud800 (a lone high surrogate), as files in the wild do.
LONE = "\\ud800"


@pytest.mark.parametrize(
    "record, field",
    [
        ('{"instruction": "q", "response": "caf\\u00e9 %s"}' % LONE, "response"),
        ('{"instruction": "q", "output": "x%s"}' % LONE, "output"),
        ('{"instruction": "q", "input": "%s", "response": "r"}' % LONE, "input"),
        ('{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "%s"}]}' % LONE,
         "conversations[1].value"),
        ('{"prompt": "p", "chosen": "x", "rejected": "%s"}' % LONE, "rejected"),
    ],
)
def test_lone_surrogate_is_refused_with_its_location(tmp_path: Path, record: str, field: str) -> None:
    path = tmp_path / "fed.json"
    text = '{"u1": [%s, %s, %s, %s]}' % (GOOD, GOOD, GOOD, record)
    assert "\\ud800" in text and json.loads(text)  # the file holds the escape; plain json accepts it
    _assert_load_fails(path, text, "u1", 3, f"record 3, {field}: contains a lone surrogate (\\ud800)")
    with pytest.raises(DataError, match="the text is not valid Unicode — fix or drop the record"):
        read_fedllm_bench(path)


def test_valid_surrogate_pair_loads(tmp_path: Path) -> None:
    path = tmp_path / "fed.json"
    path.write_text('{"u1": [{"instruction": "q", "response": "\\ud83d\\ude00"}]}')
    assert read_fedllm_bench(path)["u1"][0].response == "\U0001F600"


def test_lone_surrogate_in_client_id(tmp_path: Path) -> None:
    path = tmp_path / "fed.json"
    path.write_text('{"u%s": [%s]}' % (LONE, GOOD))
    with pytest.raises(DataError, match=r"fed.json: client id 'u\\ud800': contains a lone surrogate .* fix the client id"):
        read_fedllm_bench(path)


def test_writer_refuses_lone_surrogates(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    bad = {"a": [InstructionSample.single_turn("q", "r"), InstructionSample.single_turn("q", "r\ud800")]}
    with pytest.raises(DataError, match=r"cannot write .*out.json: client 'a', record 1, response: contains a lone surrogate"):
        write_fedllm_bench(bad, path)
    with pytest.raises(DataError, match=r"cannot write .*client id 'b\\udc80': contains a lone surrogate"):
        write_fedllm_bench({"b\udc80": [InstructionSample.single_turn("q", "r")]}, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


# ---------------------------------------------------------------------------------- atomic write


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_fedllm_bench({"a": [InstructionSample.single_turn("q", "r")]}, tmp_path / "d.json")
    before = path.read_bytes()
    bad = {"a": [InstructionSample.single_turn(f"q{i}", "r") for i in range(100)], "b": ["not a sample"]}
    with pytest.raises(DataError, match="not a sample"):
        write_fedllm_bench(bad, path)  # type: ignore[dict-item]
    with pytest.raises(DataError, match="empty client"):
        write_fedllm_bench({"a": []}, path)

    def boom(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(fedllm_bench.json, "dumps", boom)
    with pytest.raises(OSError, match="disk full"):
        write_fedllm_bench({"a": [InstructionSample.single_turn("x", "y")]}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.json"]  # no temp file left behind


def test_what_fedllm_bench_accepts_is_read_its_way_and_counted(tmp_path: Path) -> None:
    """One conversation opened by `gpt`, ended by `human`, or an empty response once rejected the whole
    file; FedLLM-Bench's preprocessing drops a leading gpt turn, leaves a trailing human turn untrained
    and trains on an empty response."""
    from fedllm.data.fedllm_bench import load_fedllm_bench

    records = {"c1": [
        {"conversations": [{"from": "gpt", "value": "Hello! How can I help?"}, {"from": "human", "value": "q1"},
                           {"from": "gpt", "value": "a1"}]},
        {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"},
                           {"from": "human", "value": "thanks"}]},
        {"instruction": "q3", "response": ""},
        {"conversations": [{"from": "human", "value": "q4"}, {"from": "gpt", "value": ""}]},
    ], "c2": [{"instruction": "q", "response": "a"}] * 2}
    path = tmp_path / "fed.json"
    path.write_text(json.dumps(records))
    ds = load_fedllm_bench(path, test_fraction=0.0, min_test=0)
    got = [[(m.role, m.content) for m in s.messages] for s in ds["c1"].train]
    assert got == [[("user", "q1"), ("assistant", "a1")], [("user", "q2"), ("assistant", "a2")],
                   [("user", "q3"), ("assistant", "")], [("user", "q4"), ("assistant", "")]]
    fix = {"leading_assistant_turn_dropped": 1, "trailing_user_turn_dropped": 1, "empty_response_kept": 1,
           "empty_assistant_turn_kept": 1}
    assert ds["c1"].meta["fixups"] == fix and "fixups" not in ds["c2"].meta
    assert ds.meta["fixups"] == fix
    # an empty response still trains: its end-of-turn token is a loss token
    from fedllm.data.formatting import encode_sft, get_template
    from fedllm.models.tiny import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    assert encode_sft(ds["c1"].train[2], get_template("chat", tok), tok, 64)["num_trainable"] >= 1


def test_data_stats_reports_the_fixups(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedllm.cli import app

    records = {"c1": [{"conversations": [{"from": "gpt", "value": "Hi!"}, {"from": "human", "value": "q"},
                                         {"from": "gpt", "value": "a"}]}, {"instruction": "q", "response": ""}] * 2,
               "c2": [{"instruction": "q", "response": "a"}] * 3}
    path = tmp_path / "fed.json"
    path.write_text(json.dumps(records))
    res = CliRunner().invoke(app, ["data", "stats", str(path), "--model", "tiny", "--out", str(tmp_path / "s"),
                                   "--no-ifd", "--no-embeddings"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["fixups"]["total"] == {"empty_response_kept": 2, "leading_assistant_turn_dropped": 2}
    assert stats["fixups"]["per_client"] == {"c1": {"empty_response_kept": 2, "leading_assistant_turn_dropped": 2}}
    card = (tmp_path / "s" / "README.md").read_text()
    assert "Read as FedLLM-Bench reads its files: 2 empty responses kept" in card
