"""Adapter-state codec: fewer bytes per State on the wire (FederatedScope-LLM's communication operators).

A ``CodecSpec`` says how the tensors of a State travel; ``encode`` turns a State into a flat dict of
tensors a safetensors file can hold plus a JSON layout, ``decode`` gives back the original keys,
shapes and dtypes. The default spec is exactly lossless, so runs that do not ask for compression send
the same values as before. Lossy settings, from cheap to aggressive (bytes relative to fp32):

* ``dtype`` fp16 / bf16 (0.5×): values rounded to nearest; fp16 keeps 11 significant bits in a narrow
  range (normal ≥ 2⁻¹⁴), bf16 keeps fp32's range with 8 bits.
* ``quantize: int8`` (≈0.25× plus scales): symmetric absmax, q = round(x / s) ∈ [−127, 127] with
  s = absmax / 127 per tensor, per row (dim 0), or per rank component (a matrix's shorter side: r
  scales for a LoRA A or B, where per row would give B one scale per output row); symmetric so that 0 maps to 0 and no zero point
  travels; s is rounded *up* to ``dtype`` so |x / s| ≤ 127 holds exactly and no clipping happens.
  Scales cost 4 / 2 bytes each: prefer bf16 or fp32 for tiny deltas, as fp16 scales go subnormal
  below absmax 127·2⁻¹⁴ ≈ 0.008 and lose relative precision there (the bound below still holds).
* ``topk`` (≈ k·(4 + value bytes) / 4): only the ⌈k·n⌉ largest-|x| entries of each tensor, as int32
  flat indices (sorted, so they compress and validate cheaply) plus their values, which then pass
  through ``dtype`` / int8 as above (int8 scales over the kept entries only).

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the sender keeps what one message lost,
r = x − decode(encode(x)), and adds it to the next state it encodes, so over R rounds
Σ decoded = Σ inputs − r_R: nothing is lost for good, only delayed.

Encoded tensor names (``<key>`` is the State key):

* ``<key>::v``     values in ``dtype`` (no int8): the original shape, or 1-D kept values with topk;
* ``<key>::q``     int8 values (with int8), shaped like ``::v`` would be;
* ``<key>::scale`` int8 scales in ``dtype``, shape [rows] (``scale: row`` and ≥ 2-D) or [1];
* ``<key>::idx``   int32 sorted flat indices of the kept entries (with topk).

Layout (JSON): ``{"format": "fedllm-codec/1", "spec": {dtype, quantize, scale, topk},
"tensors": {key: {"shape": [...], "dtype": "float32"}, ...}}`` in the State's key order.

Worst-case error of one encode/decode per entry (``error_bound``; for fp32 and fp64 inputs):
fp16 / bf16: u·|x| + η/2 with u = 2⁻¹¹ / 2⁻⁸ (round to nearest) and η the smallest subnormal
(2⁻²⁴ / 2⁻¹³³); int8: s·(1/2 + 2⁻¹⁶) with s the entry's scale (the 2⁻¹⁶ covers float arithmetic);
topk: |x| for dropped entries, the value bound above for kept ones. Lossy encoding refuses
non-finite inputs and values that overflow ``dtype`` (ValueError), where no bound would hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from fedllm.fl.base import Options
from fedllm.fl.state import State

FORMAT = "fedllm-codec/1"
SEP = "::"
QMAX = 127  # symmetric int8: −127…127 (−128 unused, so the grid is symmetric around 0)
#: relative slack of the int8 bound for float arithmetic (x / s in fp64, q·s in fp32: ≤ 2⁻¹⁷·s each)
INT8_SLACK = 2.0**-16

_TRAVEL: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_FLOATS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32,
                                   "float16": torch.float16, "bfloat16": torch.bfloat16}
_WIRE_FIELDS = ("dtype", "quantize", "scale", "topk")  # what decoding depends on


class CodecSpec(Options):
    """How the tensors of a State travel; the default is exactly lossless."""

    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="float type values (or int8 scales) travel in")
    quantize: Literal["none", "int8"] = Field("none", description="int8: symmetric absmax quantization of the values")
    scale: Literal["tensor", "row", "rank"] = Field(
        "rank", description="int8 scale granularity: one per tensor, per row (dim 0), or per rank component (along a "
                            "matrix's shorter side: LoRA A's r rows, LoRA B's r columns; r scales per matrix)")
    topk: float | None = Field(None, gt=0, le=1, description="keep only this fraction of each tensor's largest-|x| entries")
    error_feedback: bool = Field(True, description="the sender carries what a lossy message lost into its next one")


class WireSpec(CodecSpec):
    """One direction of a message: its tensors' codec, then zstd over the whole serialized message."""

    zstd: int | None = Field(None, ge=1, le=22, description="zstd level for the whole message; null: no compression")


def lossless(spec: CodecSpec) -> bool:
    """Whether decode(encode(x)) is bit-identical to x for fp32 (and fp16 / bf16) tensors."""
    return spec.dtype == "fp32" and spec.quantize == "none" and spec.topk in (None, 1.0)


def topk_count(numel: int, topk: float) -> int:
    """Entries kept of a tensor with ``numel`` entries: ⌈topk·numel⌉, at least 1 (0 for an empty tensor).
    The product is rounded to 9 decimals first, so that e.g. 0.07·100 (7.000000000000001) keeps 7, not 8."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(round(topk * numel, 9))))


# ------------------------------------------------------------------------------ encode / decode


def encode(state: State, spec: CodecSpec, residual: State | None = None) -> tuple[State, dict[str, Any], State | None]:
    """(encoded tensors, JSON layout, new residual) for ``state``; with error feedback the message
    carries state + residual and the new residual is what it lost (None when error feedback is off
    or the spec is lossless). ``state`` and ``residual`` are not modified."""
    if residual is not None and not spec.error_feedback:
        raise ValueError("a residual was given but error_feedback is off")
    exact = lossless(spec)
    encoded: State = {}
    tensors: dict[str, dict[str, Any]] = {}
    new_residual: State = {}
    if residual is not None:
        _check_residual(state, residual)
    for key, t in state.items():
        if SEP in key:
            raise ValueError(f"state key {key!r} contains the codec separator {SEP!r}")
        if not t.is_floating_point() or _dtype_name(t.dtype) not in _FLOATS:
            raise ValueError(f"codec encodes float tensors only; {key!r} is {t.dtype}")
        x = t.detach()
        if residual is not None:
            x = x + residual[key].detach().to(x.dtype)
        if not exact and not bool(torch.isfinite(x).all()):
            raise ValueError(f"lossy encoding of non-finite values in {key!r}")
        parts = _encode_tensor(x, spec, key)
        encoded.update({f"{key}{SEP}{suffix}": v for suffix, v in parts.items()})
        tensors[key] = {"shape": list(x.shape), "dtype": _dtype_name(x.dtype)}
        if spec.error_feedback and not exact:
            new_residual[key] = x - _decode_tensor(parts, tuple(x.shape), x.dtype, spec, key)
    layout = {"format": FORMAT, "spec": _wire(spec), "tensors": tensors}
    return encoded, layout, (new_residual if spec.error_feedback and not exact else None)


def decode(encoded: State, layout: dict[str, Any], spec: CodecSpec) -> State:
    """The State ``encode`` was given (up to the spec's error), with its keys, shapes and dtypes.
    ValueError if ``encoded`` or ``layout`` do not fit each other or ``spec`` (e.g. sent by a peer)."""
    if not isinstance(layout, dict) or layout.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} layout")
    if layout.get("spec") != _wire(spec):
        raise ValueError(f"layout was encoded with {layout.get('spec')}, decoding with {_wire(spec)}")
    tensors = layout.get("tensors")
    if not isinstance(tensors, dict):
        raise ValueError("layout has no tensors")  # noqa: TRY004  (a bad message, like every other)
    expected = {f"{k}{SEP}{s}" for k in tensors for s in _suffixes(spec)}
    if set(encoded) != expected:
        missing, extra = sorted(expected - set(encoded)), sorted(set(encoded) - expected)
        raise ValueError(f"encoded tensors do not match the layout: missing {missing[:3]}, unexpected {extra[:3]}")
    out: State = {}
    for key, meta in tensors.items():
        try:
            shape = tuple(int(d) for d in meta["shape"])
            dtype = _FLOATS[meta["dtype"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad layout entry for {key!r}: {meta!r}") from e
        if any(d < 0 for d in shape):
            raise ValueError(f"bad shape for {key!r}: {shape}")
        parts = {s: encoded[f"{key}{SEP}{s}"] for s in _suffixes(spec)}
        out[key] = _decode_tensor(parts, shape, dtype, spec, key)
    return out


def error_bound(x: Tensor, spec: CodecSpec) -> Tensor:
    """Per-entry worst-case |decode(encode(x)) − x| of one message without residual (float64, x's
    shape), for fp32 or fp64 ``x``; see the module docstring for the formulas."""
    x = x.detach()
    if lossless(spec) and x.dtype != torch.float64:
        return torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    flat = x.reshape(-1)
    n = flat.numel()
    nrows, group_of = _groups(tuple(x.shape), spec)
    if spec.topk is not None:
        idx = _select(flat, topk_count(n, spec.topk))
        bound = flat.abs().double()  # dropped entries lose everything
    else:
        idx = torch.arange(n, device=x.device)
        bound = torch.zeros(n, dtype=torch.float64, device=x.device)
    vals = flat[idx]
    if spec.quantize == "int8":
        rows = group_of(idx)
        s = _int8_scales(vals, rows, nrows, _TRAVEL[spec.dtype]).double()
        kept = s[rows] * (0.5 + INT8_SLACK)
    else:
        kept = _rounding_bound(vals, _TRAVEL[spec.dtype])
    bound[idx] = kept
    return bound.reshape(x.shape)


# ------------------------------------------------------------------------------ one tensor


def _encode_tensor(x: Tensor, spec: CodecSpec, key: str) -> dict[str, Tensor]:
    """Encoded parts of one tensor, by suffix."""
    travel = _TRAVEL[spec.dtype]
    flat = x.reshape(-1)
    n = flat.numel()
    if n >= 2**31 and spec.topk is not None:
        raise ValueError(f"{key!r} has {n} entries: too many for int32 indices")
    out: dict[str, Tensor] = {}
    if spec.topk is not None:
        idx = _select(flat, topk_count(n, spec.topk))
        out["idx"] = idx.to(torch.int32)
        vals, shape = flat[idx], (idx.numel(),)
    else:
        idx = torch.arange(n, device=x.device)
        vals, shape = flat, tuple(x.shape)
    if spec.quantize == "int8":
        nrows, group_of = _groups(tuple(x.shape), spec)
        rows = group_of(idx)
        s = _int8_scales(vals, rows, nrows, travel)
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"int8 scales of {key!r} overflow {spec.dtype}")
        s64 = s.double()[rows]
        q = torch.round(vals.double() / torch.where(s64 > 0, s64, 1.0)).clamp_(-QMAX, QMAX)
        out["q"] = q.to(torch.int8).reshape(shape)
        out["scale"] = s
    else:
        v = vals.to(travel, copy=True)  # a copy: never hand out the caller's storage
        if not bool(torch.isfinite(v).all()) and bool(torch.isfinite(vals).all()):
            raise ValueError(f"values of {key!r} overflow {spec.dtype}")
        out["v"] = v.reshape(shape).contiguous()
    return out


def _decode_tensor(parts: dict[str, Tensor], shape: tuple[int, ...], dtype: torch.dtype, spec: CodecSpec,
                   key: str) -> Tensor:
    """One tensor back from its parts, checking that they fit ``shape`` and ``spec``."""
    travel = _TRAVEL[spec.dtype]
    n = math.prod(shape)
    nrows, group_of = _groups(shape, spec)
    if spec.topk is not None:
        idx = parts["idx"]
        _expect(idx, torch.int32, (topk_count(n, spec.topk),), key, "idx")
        idx = idx.long()
        if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= n or not bool((idx[1:] > idx[:-1]).all())):
            raise ValueError(f"{key}{SEP}idx: indices must be strictly increasing within [0, {n})")
        vshape: tuple[int, ...] = (idx.numel(),)
    else:
        idx = torch.arange(n)
        vshape = shape
    if spec.quantize == "int8":
        q, s = parts["q"], parts["scale"]
        _expect(q, torch.int8, vshape, key, "q")
        _expect(s, travel, (nrows,), key, "scale")
        rows = group_of(idx.to(q.device))
        vals = q.reshape(-1).float() * s.float()[rows]
    else:
        v = parts["v"]
        _expect(v, travel, vshape, key, "v")
        vals = v.reshape(-1).to(torch.float32, copy=True)
    if spec.topk is not None:
        flat = torch.zeros(n, dtype=torch.float32, device=vals.device)
        flat[idx.to(vals.device)] = vals
    else:
        flat = vals
    return flat.reshape(shape).to(dtype)


# ------------------------------------------------------------------------------ helpers


def _groups(shape: tuple[int, ...], spec: CodecSpec) -> tuple[int, Callable[[Tensor], Tensor]]:
    """(number of int8 scales, flat index → scale index). ``row``: rows along dim 0 of a ≥ 2-D tensor;
    ``rank``: a 2-D matrix's rows when it is wide (LoRA A, r × in), its columns when it is tall (LoRA B,
    out × r); one scale for the whole tensor otherwise (and for 1-D tensors, where a row is one entry)."""
    n = math.prod(shape)
    if spec.scale == "rank" and len(shape) == 2 and shape[0] > shape[1]:
        cols = shape[1]
        return cols, lambda idx: idx % cols
    if spec.scale in ("row", "rank") and len(shape) >= 2:
        row_len = max(n // shape[0] if shape[0] else 0, 1)
        return shape[0], lambda idx: idx // row_len
    return 1, lambda idx: torch.zeros_like(idx)


def _select(flat: Tensor, k: int) -> Tensor:
    """Sorted flat indices (int64) of the ``k`` largest-|x| entries."""
    if k == flat.numel():
        return torch.arange(k, device=flat.device)
    return torch.topk(flat.abs(), k, sorted=False).indices.sort().values


def _int8_scales(vals: Tensor, rows: Tensor, nrows: int, travel: torch.dtype) -> Tensor:
    """absmax/127 per group in ``travel``, rounded up so that 127·s ≥ absmax holds exactly (and a
    nonzero absmax never gets a zero scale); all-zero groups get scale 0 and decode to exact zeros."""
    amax = torch.zeros(nrows, dtype=torch.float64, device=vals.device)
    if vals.numel():
        amax = amax.scatter_reduce(0, rows, vals.abs().double(), reduce="amax", include_self=True)
    s = (amax / QMAX).to(travel)
    low = s.double() * QMAX < amax
    return torch.where(low, torch.nextafter(s, torch.full_like(s, math.inf)), s)


def _rounding_bound(vals: Tensor, travel: torch.dtype) -> Tensor:
    """u·|x| + η/2: round-to-nearest into ``travel`` (0 where ``travel`` holds ``vals`` exactly)."""
    if vals.dtype == travel or (travel == torch.float32 and vals.dtype in (torch.float16, torch.bfloat16)):
        return torch.zeros(vals.shape, dtype=torch.float64, device=vals.device)
    fi = torch.finfo(travel)
    u, eta = fi.eps / 2, fi.tiny * fi.eps
    return vals.abs().double() * u + eta / 2


def _expect(t: Tensor, dtype: torch.dtype, shape: tuple[int, ...], key: str, suffix: str) -> None:
    if not isinstance(t, Tensor) or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        got = (t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{key}{SEP}{suffix}: expected {dtype} of shape {tuple(shape)}, got {got}")


def _suffixes(spec: CodecSpec) -> tuple[str, ...]:
    vals = ("q", "scale") if spec.quantize == "int8" else ("v",)
    return (("idx",) if spec.topk is not None else ()) + vals


def _wire(spec: CodecSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in _WIRE_FIELDS}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_residual(state: State, residual: State) -> None:
    if residual.keys() != state.keys():
        missing, extra = sorted(state.keys() - residual.keys()), sorted(residual.keys() - state.keys())
        raise KeyError(f"residual differs from the state in keys: missing {missing[:3]}, extra {extra[:3]}")
    for k, v in state.items():
        if tuple(residual[k].shape) != tuple(v.shape):
            raise ValueError(f"residual {k!r} has shape {tuple(residual[k].shape)}, the state {tuple(v.shape)}")
