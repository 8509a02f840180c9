"""Every JSON file the project writes is strict JSON: NaN and infinities become null, never the bare
NaN/Infinity tokens that strict parsers (and other languages) refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedllm.jsonl import JsonlCache, dumps, json_safe, write_json_atomic, write_jsonl_atomic

ODD = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "np": np.float32("nan"), "ok": 1.5, "n": np.int64(3),
       "nested": [{"x": (math.inf, 2.0)}], "text": "café"}
CLEAN = {"nan": None, "inf": None, "ninf": None, "np": None, "ok": 1.5, "n": 3, "nested": [{"x": [None, 2.0]}],
         "text": "café"}


def _refuse(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def strict_loads(text: str) -> Any:
    return json.loads(text, parse_constant=_refuse)


def test_strict_parser_refuses_bare_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"x": math.nan}))


def test_dumps_and_json_safe() -> None:
    assert json_safe(ODD) == CLEAN
    assert strict_loads(dumps(ODD)) == CLEAN
    assert "café" in dumps(ODD)  # non-ASCII kept
    assert dumps({"a": 1}, separators=(",", ":")) == '{"a":1}'


def test_written_files_are_strict_json(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a.json", ODD)
    assert strict_loads((tmp_path / "a.json").read_text(encoding="utf-8")) == CLEAN

    write_jsonl_atomic(tmp_path / "rows.jsonl", [ODD, {"loss": math.nan}])
    rows = [strict_loads(line) for line in (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [CLEAN, {"loss": None}]

    cache = JsonlCache(tmp_path / "cache.jsonl")
    cache.put("k", ODD)
    cache.put_many([("a", math.inf), ("b", [math.nan, 1.0])])
    lines = [strict_loads(line) for line in (tmp_path / "cache.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [{"k": "k", "v": CLEAN}, {"k": "a", "v": None}, {"k": "b", "v": [None, 1.0]}]
    again = JsonlCache(tmp_path / "cache.jsonl")
    assert again.data == {"k": CLEAN, "a": None, "b": [None, 1.0]}
