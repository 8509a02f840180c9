"""The encoding cache gives back exactly what the task encodes, keyed by task and content."""

from __future__ import annotations

import pytest

from fedllm.data.schema import InstructionSample, Message, PreferenceSample
from fedllm.models.tiny import build_tiny_tokenizer
from fedllm.train.encoding_cache import EncodingCache
from fedllm.train.task import Task
from tests.conftest import synthetic_federation


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def samples():
    long = InstructionSample.single_turn("word " * 80, "cut away")
    return synthetic_federation()["user1"].train + [long]


def test_cached_features_equal_the_encoding_and_are_read_back(tmp_path, tok, monkeypatch):
    task = Task.create("sft", "chat", tok, 64)
    direct = task.encode(samples())
    assert direct.dropped == 1 and len(direct) == len(samples()) - 1
    cache = EncodingCache(tmp_path, task)
    first = cache.encode(samples())
    assert first.features == direct.features and first.dropped == 1
    assert len(list(cache.dir.glob("*.safetensors"))) == 1

    def no_encoding(*a, **k):
        raise AssertionError("encoded again")

    monkeypatch.setattr(Task, "encode", no_encoding)
    again = EncodingCache(tmp_path, Task.create("sft", "chat", tok, 64)).encode(samples())
    assert again.features == direct.features and again.dropped == 1
    assert all(type(f["input_ids"]) is list and type(f["num_trainable"]) is int for f in again.features)


def test_the_key_follows_task_and_content(tmp_path, tok):
    a = EncodingCache(tmp_path, Task.create("sft", "chat", tok, 64))
    b = EncodingCache(tmp_path, Task.create("sft", "chat", tok, 32))
    c = EncodingCache(tmp_path, Task.create("sft", "alpaca", tok, 64))
    assert len({a.dir, b.dir, c.dir}) == 3
    a.encode(samples())
    a.encode(samples()[:-1])  # other content: another file
    assert len(list(a.dir.glob("*.safetensors"))) == 2


def test_a_damaged_file_is_encoded_again(tmp_path, tok):
    task = Task.create("sft", "chat", tok, 64)
    cache = EncodingCache(tmp_path, task)
    cache.encode(samples())
    path = next(cache.dir.glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:40])
    assert cache.encode(samples()).features == task.encode(samples()).features
    assert path.stat().st_size > 40  # replaced


def test_preference_features_pack_and_unpack_exactly(tok):
    from fedllm.data.formatting import encode_preference, get_template
    from fedllm.train.encoding_cache import pack, unpack
    from fedllm.train.task import Encoded

    template = get_template("chat", tok)
    pairs = [PreferenceSample((Message("user", f"q{i}?"),), f"good {i}" * i, f"bad {i}") for i in range(3)]
    enc = Encoded([encode_preference(p, template, tok, 64) for p in pairs], {"identical": 2})
    back = unpack(*pack(enc))
    assert back.features == enc.features and back.reasons == {"identical": 2}
    empty = unpack(*pack(Encoded([], {"truncated": 5})))
    assert empty.features == [] and empty.dropped == 5


def test_an_unwritable_cache_still_encodes(tmp_path, tok):
    (tmp_path / "file").write_text("not a directory")
    task = Task.create("sft", "chat", tok, 64)
    assert EncodingCache(tmp_path / "file", task).encode(samples()).features == task.encode(samples()).features
