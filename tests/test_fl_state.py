"""Adapter-state arithmetic and checkpoint packing helpers."""

from __future__ import annotations

import pytest
import torch

from fedllm.fl import state as S
from fedllm.fl.base import pack_states, unpack_state


def test_match_casts_to_the_reference_dtype_and_keys() -> None:
    a = {"x": torch.tensor([1.5, -2.0], dtype=torch.float64), "extra": torch.zeros(1)}
    like = {"x": torch.zeros(2, dtype=torch.float32)}
    out = S.match(a, like)
    assert set(out) == {"x"}  # only the reference's keys
    assert out["x"].dtype == torch.float32 and out["x"].tolist() == [1.5, -2.0]


def test_match_does_not_copy_matching_tensors() -> None:
    a = {"x": torch.ones(2)}
    assert S.match(a, {"x": torch.zeros(2)})["x"].data_ptr() == a["x"].data_ptr()


def test_match_detaches() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    assert not S.match({"x": p}, {"x": torch.zeros(2)})["x"].requires_grad


def test_match_missing_key_raises() -> None:
    with pytest.raises(KeyError, match="lacks keys"):
        S.match({"x": torch.ones(1)}, {"y": torch.ones(1)})


def test_weighted_sum_and_key_checks() -> None:
    a, b = {"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, -2.0])}
    # 0.25·[1, 2] + 0.75·[3, −2] = [2.5, −1.0]
    assert S.weighted_sum([a, b], [0.25, 0.75])["x"].tolist() == [2.5, -1.0]
    with pytest.raises(KeyError):
        S.sub(a, {"y": torch.ones(2)})
    with pytest.raises(ValueError):
        S.weighted_sum([a, b], [1.0])


def test_pack_unpack_round_trip() -> None:
    st = {"layer.0/lora_A": torch.ones(2)}
    packed = pack_states("m", st)
    assert list(packed) == ["m/layer.0/lora_A"]
    assert unpack_state("m", {**packed, "momentum/z": torch.zeros(1), "rounds_done": 3}) == st
    assert unpack_state("v", packed) is None
