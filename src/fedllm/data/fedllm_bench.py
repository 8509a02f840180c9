"""Loader and writer for the released FedLLM-Bench file format.

A file is either one JSON object mapping client id -> list of records, or a JSON list of records
(one client whose id is the file stem). A record is one of

* single-turn: ``{"instruction", "response"}`` with optional ``"system"`` and Alpaca-style ``"input"``
  (appended to the instruction after a blank line); ``"output"`` is accepted for ``"response"``;
* multi-turn (ShareGPT): ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}``,
  also with ``"user"``/``"assistant"`` roles and ``"role"``/``"content"`` keys;
* preference: ``{"prompt", "chosen", "rejected"}``; a string prompt is one user message, a list of
  turns is a conversation ending with a user turn.

Extra fields are ignored. Every problem is a :class:`DataError` naming the file, the client and the
record (and the line/column or byte offset where the file itself is broken), because a message
without a location is useless in a file of a million records. Text must be valid Unicode: a JSON
escape of a lone surrogate (``"\\ud800"``) decodes to a Python string that no tokenizer or UTF-8
writer accepts, so it is refused where it is read (and before anything is written).
"""

from __future__ import annotations

import hashlib
from collections import Counter
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fedllm.data.schema import (
    ClientData,
    DataError,
    FederatedDataset,
    InstructionSample,
    Message,
    PreferenceSample,
    Sample,
)
from fedllm.jsonl import atomic_write

__all__ = [
    "check_unicode",
    "load_fedllm_bench",
    "parse_record",
    "read_fedllm_bench",
    "record_from_sample",
    "sample_kind",
    "split_client",
    "write_fedllm_bench",
]

# Speaker names of the formats in the wild -> schema roles.
_ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_WRITE_ROLE = {"user": "human", "assistant": "gpt", "system": "system"}
_JSON_WS = " \t\n\r"


def _article(role: str) -> str:
    return "an" if role == "assistant" else "a"  # a user, a system, an assistant


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _where(file: str | os.PathLike[str], client: str, index: int) -> str:
    return f"{file}: client {client!r}, record {index}"


def check_unicode(text: str, where: str, fix: str = "fix or drop the record") -> str:
    """`text` if it is valid Unicode; a DataError at `where` naming the first lone surrogate otherwise.

    A lone surrogate (U+D800..U+DFFF outside a pair) comes from a JSON escape such as ``"\\ud800"``;
    it cannot be encoded as UTF-8, so tokenizers and file writers fail on it far from its origin.
    ASCII text is accepted without encoding it.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{where}: contains a lone surrogate (\\u{ord(text[e.start]):04x}) at character {e.start}; "
            f"the text is not valid Unicode — {fix}"
        ) from None
    return text


def _optional_str(record: Mapping[str, Any], key: str, where: str) -> str | None:
    """The string field `key`, or None when absent or null."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value if value is None else check_unicode(value, f"{where}, {key}")


def _required_str(record: Mapping[str, Any], key: str, where: str, empty_ok: bool = False) -> str:
    """The string field `key`, non-empty unless ``empty_ok``."""
    if key not in record:
        raise DataError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    check_unicode(value, f"{where}, {key}")
    if not value.strip() and not empty_ok:
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _parse_turns(turns: Any, where: str, field: str, *, last_role: str,
                 fixups: Counter[str] | None = None) -> tuple[Message, ...]:
    """A list of chat turns -> messages: optional leading system turn, then user/assistant turns
    alternating from a user turn and ending with `last_role`.

    A conversation (``last_role="assistant"``) is read the way FedLLM-Bench's preprocessing treats
    its released files: assistant turns before the first user turn are dropped, user turns after the
    last assistant turn are dropped (they would be left untrained), and empty turns are kept (an empty
    response trains the end-of-turn token); each fix-up is counted in ``fixups``."""
    lenient = last_role == "assistant"
    if not isinstance(turns, list):
        raise DataError(f"{where}: field {field!r} must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise DataError(f"{where}: field {field!r} is an empty conversation")
    messages: list[Message] = []
    for t, turn in enumerate(turns):
        at = f"{where}: {field}[{t}]"
        if not isinstance(turn, dict):
            raise DataError(f"{at}: a turn must be an object, got {type(turn).__name__}")
        role_key = "from" if "from" in turn else "role"
        content_key = "value" if "value" in turn else "content"
        if role_key not in turn:
            raise DataError(f"{at}: missing speaker field 'from' (or 'role')")
        if content_key not in turn:
            raise DataError(f"{at}: missing text field 'value' (or 'content')")
        speaker, content = turn[role_key], turn[content_key]
        role = _ROLE_NAMES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise DataError(f"{at}: unknown speaker {speaker!r}; expected one of {sorted(_ROLE_NAMES)}")
        if not isinstance(content, str):
            raise DataError(f"{at}: {content_key!r} must be a string, got {type(content).__name__}")
        check_unicode(content, f"{where}, {field}[{t}].{content_key}")
        if role != "system" and not content.strip():
            if not lenient:
                raise DataError(f"{at}: empty {role} turn")
            _count(fixups, f"empty_{role}_turn_kept")
        opening = not any(m.role == "user" for m in messages)
        if lenient and role == "assistant" and opening:
            _count(fixups, "leading_assistant_turn_dropped")
            continue
        expected = "user" if not messages or messages[-1].role != "user" else "assistant"
        if role == "system":
            if messages:
                raise DataError(f"{at}: a system turn may only open the conversation")
        elif role != expected:
            before = f"{_article(messages[-1].role)} {messages[-1].role} turn" if messages else "the start of the conversation"
            raise DataError(f"{at}: turns do not alternate: {_article(role)} {role} turn follows {before} "
                            f"(expected {_article(expected)} {expected} turn)")
        messages.append(Message(role, content))
    if lenient:
        while messages and messages[-1].role == "user":
            messages.pop()
            _count(fixups, "trailing_user_turn_dropped")
        if not any(m.role == "assistant" for m in messages):
            raise DataError(f"{where}: field {field!r} has no user turn answered by the assistant")
    if messages[-1].role != last_role:
        raise DataError(
            f"{where}: field {field!r} must end with a turn by the {last_role}, not by the {messages[-1].role}"
        )
    return tuple(messages)


def _count(fixups: Counter[str] | None, what: str) -> None:
    if fixups is not None:
        fixups[what] += 1


def parse_record(record: Any, *, file: str | os.PathLike[str], client: str, index: int,
                 fixups: Counter[str] | None = None) -> Sample:
    """One FedLLM-Bench record -> a schema sample; a DataError names file, client and index. What
    FedLLM-Bench itself accepts (an empty response, a conversation opened by the assistant or ended
    by the user) is read as it reads it, and counted in ``fixups``."""
    where = _where(file, client, index)
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        messages = _parse_turns(record["conversations"], where, "conversations", last_role="assistant", fixups=fixups)
        system = _optional_str(record, "system", where)
        if system and messages[0].role != "system":
            messages = (Message("system", system), *messages)
        return InstructionSample(messages)
    if {"prompt", "chosen", "rejected"} & record.keys():
        prompt = record.get("prompt")
        if isinstance(prompt, list):
            prompt_msgs = _parse_turns(prompt, where, "prompt", last_role="user")
        else:
            prompt_msgs = (Message("user", _required_str(record, "prompt", where)),)
        chosen = _required_str(record, "chosen", where)
        rejected = _required_str(record, "rejected", where)
        return PreferenceSample(prompt_msgs, chosen, rejected)
    if "instruction" in record or "response" in record or "output" in record:
        instruction = _required_str(record, "instruction", where)
        response_key = "response" if "response" in record or "output" not in record else "output"
        response = _required_str(record, response_key, where, empty_ok=True)
        if not response.strip():
            _count(fixups, "empty_response_kept")
        extra = _optional_str(record, "input", where)
        if extra and extra.strip():
            instruction = f"{instruction}\n\n{extra}"
        system = _optional_str(record, "system", where)
        return InstructionSample.single_turn(instruction, response, system)
    raise DataError(
        f"{where}: unknown record kind with fields {sorted(record)}; expected "
        "'instruction'+'response', 'conversations', or 'prompt'+'chosen'+'rejected'"
    )


def sample_kind(sample: Sample) -> str:
    """'instruction' or 'preference' (a client holds one kind only)."""
    if isinstance(sample, InstructionSample):
        return "instruction"
    if isinstance(sample, PreferenceSample):
        return "preference"
    raise DataError(f"not a sample: {type(sample).__name__}")


def record_from_sample(sample: Sample) -> dict[str, Any]:
    """The FedLLM-Bench record of a sample: the most compact form that parses back to it."""
    if isinstance(sample, InstructionSample):
        roles = [m.role for m in sample.messages]
        if roles == ["user", "assistant"]:
            return {"instruction": sample.messages[0].content, "response": sample.messages[1].content}
        return {"conversations": [{"from": _WRITE_ROLE[m.role], "value": m.content} for m in sample.messages]}
    if isinstance(sample, PreferenceSample):
        if len(sample.prompt) == 1 and sample.prompt[0].role == "user":
            prompt: Any = sample.prompt[0].content
        else:
            prompt = [m.to_dict() for m in sample.prompt]
        return {"prompt": prompt, "chosen": sample.chosen, "rejected": sample.rejected}
    raise DataError(f"not a sample: {type(sample).__name__}")


# --------------------------------------------------------------------------------------------
# File scanning: a top-level scanner around json's raw_decode, so that a syntax error, a bad
# byte or a bad record can be attributed to its client and record index.
# --------------------------------------------------------------------------------------------


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - text.rfind(chr(10), 0, pos)}"


class _Scanner:
    """Walks `{client: [record, ...], ...}` or `[record, ...]` one JSON value at a time."""

    def __init__(self, text: str, file: str, bad_char: int | None, bad_byte: int | None) -> None:
        self.text, self.file = text, file
        self.bad_char, self.bad_byte = bad_char, bad_byte
        self.pos = 0
        self.decoder = json.JSONDecoder()

    def _skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _JSON_WS:
            pos += 1
        self.pos = pos

    def _fail(self, what: str, where: str) -> DataError:
        if self.bad_char is not None and self.bad_char <= self.pos:  # the real cause
            return self._bad_bytes(where)
        return DataError(f"{where}: invalid JSON at {_line_col(self.text, self.pos)}: {what}")

    def _value(self, where: str) -> Any:
        start = self.pos
        try:
            value, self.pos = self.decoder.raw_decode(self.text, self.pos)
        except json.JSONDecodeError as e:
            self.pos = e.pos
            raise self._fail(e.msg, where) from None
        self._check_bytes(start, where)
        return value

    def _check_bytes(self, start: int, where: str) -> None:
        if self.bad_char is not None and start <= self.bad_char < self.pos:
            raise self._bad_bytes(where)

    def _bad_bytes(self, where: str) -> DataError:
        return DataError(f"{where}: not valid UTF-8: undecodable byte at byte offset {self.bad_byte}")

    def _expect(self, char: str, where: str) -> None:
        self._skip_ws()
        if self.text.startswith(char, self.pos):
            self.pos += 1
        else:
            found = self.text[self.pos] if self.pos < len(self.text) else "end of file"
            raise self._fail(f"expected {char!r}, found {found!r}", where)

    def _peek(self, char: str) -> bool:
        self._skip_ws()
        return self.text.startswith(char, self.pos)

    def records(self, client: str) -> list[Any]:
        """The array of records of one client, starting at its '['."""
        where = f"{self.file}: client {client!r}"
        if not self._peek("["):
            start = self.pos
            value = self._value(where)
            raise DataError(
                f"{where}: records must be a JSON list, got {type(value).__name__} at {_line_col(self.text, start)}"
            )
        self.pos += 1
        out: list[Any] = []
        if self._peek("]"):
            self.pos += 1
            return out
        while True:
            rec_where = _where(self.file, client, len(out))
            self._skip_ws()
            out.append(self._value(rec_where))
            if self._peek("]"):
                self.pos += 1
                return out
            self._expect(",", _where(self.file, client, len(out)))

    def scan(self, default_client: str) -> dict[str, list[Any]]:
        """client id -> raw records, in file order."""
        self._skip_ws()
        clients: dict[str, list[Any]] = {}
        if self._peek("["):
            clients[default_client] = self.records(default_client)
        elif self._peek("{"):
            self.pos += 1
            while not self._peek("}") or clients:  # leaves by `break` once a client was read
                key_where = f"{self.file}: client #{len(clients)}"
                if not self._peek('"'):
                    raise self._fail("expected a client id string", key_where)
                client = self._value(key_where)
                check_unicode(client, f"{self.file}: client id {client!r}", "fix the client id")
                if client in clients:
                    raise DataError(f"{self.file}: client {client!r}: duplicate client id")
                self._expect(":", f"{self.file}: client {client!r}")
                clients[client] = self.records(client)
                if self._peek("}"):
                    break
                self._expect(",", f"{self.file}: after client {client!r}")
            self.pos += 1
            if not clients:
                raise DataError(f"{self.file}: no clients (empty object)")
        else:
            if self.pos >= len(self.text):
                raise DataError(f"{self.file}: empty file (expected a JSON object or list)")
            value = self._value(self.file)
            raise DataError(
                f"{self.file}: top level must be an object (client -> records) or a list, got {type(value).__name__}"
            )
        self._skip_ws()
        if self.pos < len(self.text):
            raise self._fail("extra data after the top-level value", self.file)
        self._check_bytes(0, self.file)
        return clients


def _decode(data: bytes) -> tuple[str, int | None, int | None]:
    """UTF-8 text (BOM stripped), plus the char index and byte offset of the first bad byte, if any:
    the text is decoded with surrogateescape so the scanner can tell which record holds that byte."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8"), None, None
    except UnicodeDecodeError as e:
        bad_byte = bom + e.start
        bad_char = len(data[bom:bad_byte].decode("utf-8"))
        return data[bom:].decode("utf-8", errors="surrogateescape"), bad_char, bad_byte


def read_fedllm_bench(path: str | os.PathLike[str],
                      fixups: dict[str, Counter[str]] | None = None) -> dict[str, list[Sample]]:
    """client id -> parsed samples of a FedLLM-Bench file, in file order; no split. ``fixups`` gets,
    per client, the counts of what was read as FedLLM-Bench reads it (see :func:`parse_record`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such FedLLM-Bench file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a FedLLM-Bench JSON file") from None
    text, bad_char, bad_byte = _decode(data)
    raw = _Scanner(text, str(path), bad_char, bad_byte).scan(default_client=path.stem)
    clients: dict[str, list[Sample]] = {}
    for client, records in raw.items():
        if not records:
            raise DataError(f"{path}: client {client!r}: empty client (0 records)")
        counts: Counter[str] = Counter()
        samples = [parse_record(r, file=path, client=client, index=i, fixups=counts) for i, r in enumerate(records)]
        if fixups is not None and counts:
            fixups[client] = counts
        kind = sample_kind(samples[0])
        for i, s in enumerate(samples):
            if sample_kind(s) != kind:
                raise DataError(
                    f"{_where(path, client, i)}: mixed sample kinds in one client: "
                    f"{sample_kind(s)} record after {kind} records"
                )
        clients[client] = samples
    return clients


# --------------------------------------------------------------------------------------------
# Split and load
# --------------------------------------------------------------------------------------------


def split_client(
    samples: list[Sample], *, client_id: str, test_fraction: float = 0.1, min_test: int = 1, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(train, test) of one client, disjoint and covering, each in original order.

    Which samples go to test depends only on (seed, client id, index) through blake2b, so it is the
    same in every process, platform and Python version. A client that would keep no training sample
    keeps everything in train.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if min_test < 0:
        raise ValueError(f"min_test must be >= 0, got {min_test}")
    n = len(samples)
    if test_fraction == 0.0 or n == 0:
        return list(samples), []
    n_test = max(min_test, int(n * test_fraction + 0.5))
    if n - n_test < 1:
        return list(samples), []
    client_key = hashlib.sha256(f"{seed}\x00{client_id}".encode()).digest()[:32]

    def rank(i: int) -> bytes:
        return hashlib.blake2b(i.to_bytes(8, "little"), key=client_key, digest_size=16).digest()

    test_idx = set(sorted(range(n), key=rank)[:n_test])
    train = [s for i, s in enumerate(samples) if i not in test_idx]
    test = [s for i, s in enumerate(samples) if i in test_idx]
    return train, test


def load_fedllm_bench(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    test_fraction: float = 0.1,
    min_test: int = 1,
    seed: int = 0,
    max_clients: int | None = None,
) -> FederatedDataset:
    """A FedLLM-Bench file -> FederatedDataset with a seeded per-client train/test split.

    `max_clients` keeps the first clients in file order. Client meta: num_samples (total),
    num_train, num_test, kind.
    """
    path = Path(path)
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients must be >= 1, got {max_clients}")
    fixups: dict[str, Counter[str]] = {}
    clients = read_fedllm_bench(path, fixups)
    ids = list(clients)[:max_clients] if max_clients is not None else list(clients)
    out: list[ClientData] = []
    for cid in ids:
        samples = clients[cid]
        train, test = split_client(samples, client_id=cid, test_fraction=test_fraction, min_test=min_test, seed=seed)
        meta = {
            "num_samples": len(samples),
            "num_train": len(train),
            "num_test": len(test),
            "kind": sample_kind(samples[0]),
            **({"fixups": dict(sorted(fixups[cid].items()))} if cid in fixups else {}),
        }
        out.append(ClientData(cid, train, test, meta))
    meta = {
        "source": str(path),
        "format": "fedllm-bench",
        "test_fraction": test_fraction,
        "min_test": min_test,
        "seed": seed,
        "max_clients": max_clients,
        "num_clients": len(out),
        "num_samples": sum(c.meta["num_samples"] for c in out),
        "fixups": dict(sorted(sum((fixups.get(c.id, Counter()) for c in out), Counter()).items())),
    }
    return FederatedDataset.from_clients(name or path.stem, out, meta)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _dump_lines(clients: Mapping[str, Iterable[Sample]], path: Path) -> Iterator[str]:
    """The file as chunks: one record per line, so a broken file reports a useful line number."""
    yield "{"
    for c, (cid, samples) in enumerate(clients.items()):
        if not isinstance(cid, str):
            raise DataError(f"{path}: client ids must be strings, got {cid!r}")
        check_unicode(cid, f"cannot write {path}: client id {cid!r}", "fix the client id")
        records = [record_from_sample(s) for s in samples]
        if not records:
            raise DataError(f"{path}: client {cid!r}: empty client (0 records)")
        kinds = {sample_kind(s) for s in samples}
        if len(kinds) > 1:
            raise DataError(f"{path}: client {cid!r}: mixed sample kinds {sorted(kinds)}")
        yield ("," if c else "") + f"\n{json.dumps(cid, ensure_ascii=False)}: ["
        for i, rec in enumerate(records):
            try:  # refuse what would not load back (text that is not valid Unicode included)
                parse_record(rec, file=path, client=cid, index=i)
            except DataError as e:
                raise DataError(f"cannot write {e}") from None
            yield ("," if i else "") + "\n  " + json.dumps(rec, ensure_ascii=False)
        yield "\n]"
    yield "\n}\n"


def write_fedllm_bench(clients: Mapping[str, list[Sample]], path: str | os.PathLike[str]) -> Path:
    """Write client id -> samples as a FedLLM-Bench JSON object (UTF-8, atomic); returns the path.

    Single-turn samples without a system prompt become instruction/response records, other
    conversations ShareGPT `conversations`, preference pairs prompt/chosen/rejected, so that
    `read_fedllm_bench(write_fedllm_bench(x))` gives back x.
    """
    path = Path(path)

    def write(f: Any) -> None:
        for chunk in _dump_lines(clients, path):
            f.write(chunk)

    atomic_write(path, write)
    return path
