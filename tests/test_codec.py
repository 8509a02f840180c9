"""Adapter-state codec: exact default, documented error bounds, byte sizes, top-k with error feedback."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedllm.fl import state as S
from fedllm.fl.codec import CodecSpec, decode, encode, error_bound, lossless, topk_count


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def lora_pair(seed: int = 0) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {"layer.lora_A.weight": torch.randn(16, 576, generator=g) * 0.02,
            "layer.lora_B.weight": torch.randn(576, 16, generator=g) * 1e-3}


def roundtrip(state: dict[str, torch.Tensor], spec: CodecSpec) -> dict[str, torch.Tensor]:
    """Through encode, safetensors bytes and JSON, and back, as a message would travel."""
    enc, layout, _ = encode(state, spec)
    blob = st_save(enc, metadata={"layout": json.dumps(layout)})
    return decode(st_load(blob), json.loads(json.dumps(layout)), spec)


def test_default_spec_is_bit_exact_for_odd_shapes() -> None:
    g = _gen(1)
    state = {"a": torch.randn(16, 576, generator=g), "b": torch.randn(7, generator=g), "c": torch.randn(1, 1, generator=g),
             "zero": torch.zeros(3, 4), "neg0": torch.tensor([-0.0, 1e-45, 3.4e38]), "scalar": torch.tensor(2.5),
             "empty": torch.zeros(0, 16), "half": torch.randn(5, 3, generator=g).to(torch.bfloat16)}
    spec = CodecSpec()
    assert lossless(spec)
    before = S.clone(state)
    enc, layout, residual = encode(state, spec)
    assert residual is None
    out = decode(enc, layout, spec)
    assert list(out) == list(state)
    for k, v in state.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert torch.equal(_bits(out[k]), _bits(v)), k  # bit for bit: −0.0 and subnormals too
        assert torch.equal(v, before[k])  # input untouched
        assert out[k].data_ptr() != v.data_ptr() or v.numel() == 0
    assert all(t.data_ptr() != v.data_ptr() for t in enc.values() for v in state.values() if v.numel())
    for k, v in roundtrip(state, spec).items():
        assert torch.equal(v, state[k]) and v.dtype == state[k].dtype


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_within_bound(dtype: str) -> None:
    g = _gen(2)
    # magnitudes from 1e-10 (fp16 subnormal / underflow) to 100
    x = torch.randn(64, 96, generator=g) * torch.pow(10.0, torch.empty(64, 96).uniform_(-10, 2, generator=g))
    x[3] = 0.0
    spec = CodecSpec(dtype=dtype)
    assert not lossless(spec)
    out = roundtrip({"x": x}, spec)["x"]
    assert out.dtype == torch.float32 and out.shape == x.shape
    err = (out.double() - x.double()).abs()
    bound = error_bound(x, spec)
    assert bool((err <= bound).all()), float((err - bound).max())
    assert bool((out[3] == 0).all())
    u = 2.0**-11 if dtype == "fp16" else 2.0**-8
    assert float(err.max()) > 0.25 * u * float(x.abs().max()) * 1e-3  # it is lossy: something was rounded
    normal = x.abs() > 1e-3
    assert bool((err[normal] <= u * x.abs().double()[normal]).all())  # the documented relative bound


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_int8_error_within_half_a_scale(dtype: str, granularity: str) -> None:
    g = _gen(3)
    x = torch.randn(40, 24, generator=g) * torch.logspace(-4, 1, 40).unsqueeze(1)
    x[7] = 0.0
    spec = CodecSpec(quantize="int8", scale=granularity, dtype=dtype)
    enc, layout, _ = encode({"x": x}, spec)
    out = decode(enc, layout, spec)["x"]
    assert out.dtype == torch.float32
    s = enc["x::scale"].double()
    assert s.shape == ((40,) if granularity == "row" else (1,))
    rel = {"fp32": 2.0**-23, "fp16": 2.0**-10, "bf16": 2.0**-7}[dtype]
    # the absmax lands on ±127 (±126 where rounding the scale up in its dtype shrank it below 126.5)
    assert enc["x::q"].dtype == torch.int8 and int(enc["x::q"].abs().max()) >= round(127 / (1 + rel))
    per_entry = (s.unsqueeze(1) if granularity == "row" else s).expand(40, 24)
    err = (out.double() - x.double()).abs()
    assert bool((err <= per_entry * (0.5 + 2.0**-16)).all())
    assert bool((err <= error_bound(x, spec)).all())
    # the scale is absmax/127, rounded up in its dtype by at most one unit (subnormal fp16 units are 2⁻²⁴)
    amax = x.abs().amax(dim=1).double() if granularity == "row" else x.abs().max().double().reshape(1)
    unit = {"fp32": 1e-45, "fp16": 2.0**-24, "bf16": 1e-40}[dtype]
    assert bool((s * 127 >= amax).all()) and bool((s <= amax / 127 * (1 + rel) + unit).all())
    if granularity == "row":
        assert float(s[7]) == 0.0 and bool((out[7] == 0).all())  # zero row: exact zeros, no 0/0


def test_int8_zero_tensor_and_tiny_values() -> None:
    spec = CodecSpec(quantize="int8", scale="tensor", dtype="fp16")
    tiny = torch.tensor([[1e-7, -5e-8, 0.0]])
    enc, layout, _ = encode({"z": torch.zeros(4, 5), "tiny": tiny}, spec)
    out = decode(enc, layout, spec)
    assert torch.equal(out["z"], torch.zeros(4, 5)) and float(enc["z::scale"]) == 0.0
    # absmax/127 underflows fp16, but the scale is rounded up to its smallest subnormal 2⁻²⁴, not to 0
    assert float(enc["tiny::scale"]) == 2.0**-24
    assert out["tiny"][0, 0] > 0 and out["tiny"][0, 2] == 0
    assert float((out["tiny"] - tiny).abs().max()) <= 2.0**-25


def test_int8_per_row_beats_per_tensor_on_uneven_rows() -> None:
    g = _gen(4)
    x = torch.randn(32, 64, generator=g) * torch.logspace(-5, 0, 32).unsqueeze(1)
    worst = {}
    for gran in ("tensor", "row"):
        out = roundtrip({"x": x}, CodecSpec(quantize="int8", scale=gran))["x"]
        worst[gran] = float(((out - x).norm(dim=1) / x.norm(dim=1)).max())  # worst row's relative error
    assert worst["row"] < 0.01 and worst["tensor"] > 0.9, worst  # per tensor, the small rows round to 0
    assert worst["row"] < 0.05 * worst["tensor"]


def test_topk_keeps_exactly_the_largest() -> None:
    g = _gen(5)
    x = torch.randn(16, 576, generator=g)
    for k in (0.001, 0.05, 0.1, 0.5, 1.0):
        spec = CodecSpec(topk=k, error_feedback=False)
        enc, layout, residual = encode({"x": x}, spec)
        assert residual is None
        n = math.ceil(k * x.numel())
        assert topk_count(x.numel(), k) == n
        assert enc["x::idx"].dtype == torch.int32 and enc["x::idx"].shape == (n,)
        out = decode(enc, layout, spec)["x"]
        kept = out != 0
        assert int(kept.sum()) == n
        assert torch.equal(out[kept], x[kept])  # fp32 values travel exactly
        if n < x.numel():
            assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
        assert bool(((out.double() - x.double()).abs() <= error_bound(x, spec)).all())


def test_topk_rounding_and_minimum() -> None:
    assert topk_count(100, 0.07) == 7  # 0.07·100 is 7.000000000000001 in floats
    assert topk_count(10, 0.1) == 1
    assert topk_count(10, 0.11) == 2
    assert topk_count(1000, 1e-9) == 1  # at least one
    assert topk_count(7, 1.0) == 7 and topk_count(0, 0.5) == 0
    out = roundtrip({"a": torch.tensor([0.1, -3.0, 2.0]), "one": torch.tensor([[5.0]])}, CodecSpec(topk=0.01))
    assert out["a"].tolist() == [0.0, -3.0, 0.0] and out["one"].tolist() == [[5.0]]


def test_topk_with_int8_and_bf16_stays_within_bound() -> None:
    g = _gen(6)
    x = torch.randn(48, 20, generator=g) * torch.logspace(-3, 0, 48).unsqueeze(1)
    for spec in (CodecSpec(topk=0.2, quantize="int8", scale="row", dtype="fp16"),
                 CodecSpec(topk=0.2, quantize="int8", scale="tensor"), CodecSpec(topk=0.2, dtype="bf16")):
        enc, layout, residual = encode({"x": x}, spec)
        out = decode(enc, layout, spec)["x"]
        err = (out.double() - x.double()).abs()
        assert bool((err <= error_bound(x, spec)).all()), spec
        assert torch.allclose(residual["x"], x - out, atol=0, rtol=0)
        assert int((out != 0).sum()) <= topk_count(x.numel(), 0.2)


@pytest.mark.parametrize("spec", [CodecSpec(topk=0.1), CodecSpec(topk=0.05, quantize="int8", dtype="bf16")])
def test_error_feedback_loses_nothing_for_good(spec: CodecSpec) -> None:
    g = _gen(7)
    mean = torch.randn(24, 40, generator=g)
    inputs = [{"w": mean + 0.3 * torch.randn(24, 40, generator=g)} for _ in range(60)]
    sum_in = torch.zeros(24, 40, dtype=torch.float64)
    sum_dec = torch.zeros(24, 40, dtype=torch.float64)
    sum_dec_no_ef = torch.zeros(24, 40, dtype=torch.float64)
    no_ef = spec.model_copy(update={"error_feedback": False})
    residual = None
    for x in inputs:
        before, before_r = S.clone(x), (None if residual is None else S.clone(residual))
        enc, layout, residual_next = encode(x, spec, residual)
        assert torch.equal(x["w"], before["w"])  # inputs untouched
        assert residual is None or torch.equal(residual["w"], before_r["w"])
        residual = residual_next
        sum_in += x["w"].double()
        sum_dec += decode(enc, layout, spec)["w"].double()
        e2, l2, _ = encode(x, no_ef)
        sum_dec_no_ef += decode(e2, l2, no_ef)["w"].double()
    gap = float((sum_dec - sum_in).norm())
    assert residual is not None
    # Σ decoded = Σ inputs − r_R: the residual holds exactly what has not arrived yet
    assert math.isclose(gap, S.norm(residual), rel_tol=1e-5)
    assert torch.allclose(sum_in - sum_dec, residual["w"].double(), atol=1e-4)
    # … and it stays bounded while the sum grows: relative error small, far below dropping without feedback
    rel, rel_no_ef = gap / float(sum_in.norm()), float((sum_dec_no_ef - sum_in).norm() / sum_in.norm())
    assert rel < 0.15 and rel < 0.2 * rel_no_ef, (rel, rel_no_ef)


def test_residual_rules() -> None:
    x = {"w": torch.ones(2, 3)}
    with pytest.raises(ValueError, match="error_feedback"):
        encode(x, CodecSpec(topk=0.5, error_feedback=False), {"w": torch.zeros(2, 3)})
    with pytest.raises(KeyError):
        encode(x, CodecSpec(topk=0.5), {"v": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="shape"):
        encode(x, CodecSpec(topk=0.5), {"w": torch.zeros(1)})  # would broadcast silently
    # a lossless spec delivers a pending residual in full and keeps none
    enc, layout, r = encode(x, CodecSpec(), {"w": torch.full((2, 3), 0.5)})
    assert r is None and torch.equal(decode(enc, layout, CodecSpec())["w"], torch.full((2, 3), 1.5))


def test_bytes_on_the_wire() -> None:
    pair = lora_pair()
    fp32 = S.num_bytes(pair)
    assert fp32 == 2 * 16 * 576 * 4

    def ratio(spec: CodecSpec) -> float:
        return S.num_bytes(encode(pair, spec)[0]) / fp32

    assert ratio(CodecSpec()) == 1.0
    assert ratio(CodecSpec(dtype="fp16")) == 0.5 and ratio(CodecSpec(dtype="bf16")) == 0.5
    assert ratio(CodecSpec(quantize="int8", scale="tensor")) == (2 * 9216 + 2 * 4) / fp32  # 0.2501
    # per row (dim 0): 16 scales for lora_A (16×576), 576 for lora_B (576×16), each in ``dtype``
    assert ratio(CodecSpec(quantize="int8", scale="row", dtype="fp16")) == (2 * 9216 + 2 * (16 + 576)) / fp32  # 0.266
    assert ratio(CodecSpec(quantize="int8", scale="row", dtype="fp32")) == (2 * 9216 + 4 * (16 + 576)) / fp32  # 0.282
    a_only = {"a": pair["layer.lora_A.weight"]}
    assert S.num_bytes(encode(a_only, CodecSpec(quantize="int8", dtype="bf16"))[0]) / S.num_bytes(a_only) <= 0.26
    # top-10 %: int32 index + fp16 value per kept entry = 6 of 40 bytes
    assert ratio(CodecSpec(topk=0.1, dtype="fp16")) == 2 * 922 * 6 / fp32
    assert ratio(CodecSpec(topk=0.1, quantize="int8", scale="tensor", dtype="fp16")) <= 0.13


@pytest.mark.parametrize("bad, field", [({"topk": 0}, "topk"), ({"topk": 1.5}, "topk"), ({"topk": float("nan")}, "topk"),
                                        ({"dtype": "fp8"}, "dtype"), ({"quantize": "int4"}, "quantize"),
                                        ({"scale": "column"}, "scale"), ({"compress": True}, "compress")])
def test_bad_specs_name_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CodecSpec(**bad)


def test_spec_is_frozen() -> None:
    spec = CodecSpec()
    with pytest.raises(ValueError):
        spec.dtype = "fp16"  # type: ignore[misc]


def test_decode_rejects_what_does_not_fit() -> None:
    x = {"w": torch.randn(4, 6, generator=_gen(8))}
    spec = CodecSpec(topk=0.5, quantize="int8")
    enc, layout, _ = encode(x, spec)
    with pytest.raises(ValueError, match="encoded with"):
        decode(enc, layout, CodecSpec(topk=0.5))
    with pytest.raises(ValueError, match="missing"):
        decode({k: v for k, v in enc.items() if not k.endswith("::scale")}, layout, spec)
    bad_idx = dict(enc)
    bad_idx["w::idx"] = enc["w::idx"].flip(0).contiguous()
    with pytest.raises(ValueError, match="increasing"):
        decode(bad_idx, layout, spec)
    out_of_range = dict(enc)
    out_of_range["w::idx"] = enc["w::idx"] + 100
    with pytest.raises(ValueError, match="increasing"):
        decode(out_of_range, layout, spec)
    wrong_dtype = dict(enc)
    wrong_dtype["w::q"] = enc["w::q"].float()
    with pytest.raises(ValueError, match="w::q"):
        decode(wrong_dtype, layout, spec)
    with pytest.raises(ValueError, match="layout"):
        decode(enc, {"tensors": {}}, spec)


def test_lossy_encoding_refuses_what_it_cannot_bound() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        encode({"w": torch.tensor([1.0, float("nan")])}, CodecSpec(dtype="fp16"))
    with pytest.raises(ValueError, match="overflow"):
        encode({"w": torch.tensor([1e6, 1.0])}, CodecSpec(dtype="fp16"))
    with pytest.raises(ValueError, match="float tensors"):
        encode({"w": torch.arange(3)}, CodecSpec())
    # lossless passes anything float through untouched, NaN included
    enc, layout, _ = encode({"w": torch.tensor([float("nan"), float("inf")])}, CodecSpec())
    assert torch.equal(decode(enc, layout, CodecSpec())["w"].isnan(), torch.tensor([True, False]))


def test_rank_scales_follow_the_lora_rank_and_beat_row_scales_on_b():
    """rank: one scale per rank component, i.e. per row of A (r × in) and per column of B (out × r)."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(16, 576, generator=gen) * torch.logspace(-3, 0, 16).unsqueeze(1)  # rows of very different size
    b = torch.randn(576, 16, generator=gen) * torch.logspace(-3, 0, 16).unsqueeze(0)  # columns of very different size
    state = {"q.lora_A.weight": a, "q.lora_B.weight": b}
    rank = CodecSpec(quantize="int8", scale="rank")
    enc, layout, _ = encode(state, rank, None)
    assert enc["q.lora_A.weight::scale"].shape == (16,) and enc["q.lora_B.weight::scale"].shape == (16,)
    nbytes = sum(t.numel() * t.element_size() for t in enc.values())
    assert nbytes <= 0.26 * sum(t.numel() * 4 for t in state.values())  # 16 scales per matrix, not 576
    back = decode(enc, layout, rank)
    for k, x in state.items():
        assert bool(((back[k] - x).abs() <= error_bound(x, rank)).all())
    # per column of B: small columns keep their precision; one scale per row (of 16 mixed columns) does not
    row = CodecSpec(quantize="int8", scale="row")
    err_rank = (decode(*encode(state, rank, None)[:2], rank)["q.lora_B.weight"] - b)[:, 0].abs().max()
    err_row = (decode(*encode(state, row, None)[:2], row)["q.lora_B.weight"] - b)[:, 0].abs().max()
    assert err_rank < err_row / 10
