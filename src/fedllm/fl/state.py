"""Adapter state: a plain ``dict[str, Tensor]`` of trainable parameters, and arithmetic on it.

All helpers return new dicts and never modify their inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

State = dict[str, Tensor]


def _check_keys(a: State, b: State) -> None:
    if a.keys() != b.keys():
        missing, extra = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise KeyError(f"adapter states differ in keys: only left {missing[:3]}, only right {extra[:3]}")


def is_lora_a(key: str) -> bool:
    """Whether an adapter key names a LoRA A matrix (peft's key names)."""
    return ".lora_A." in key or key.endswith("lora_A.weight")


def clone(a: State) -> State:
    return {k: v.detach().clone() for k, v in a.items()}


def zeros_like(a: State) -> State:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def full_like(a: State, value: float) -> State:
    return {k: torch.full_like(v, value) for k, v in a.items()}


def match(a: State, like: Mapping[str, Tensor]) -> State:
    """``a``'s tensors for the keys of ``like``, on the device and dtype of ``like``'s (no copy where they match)."""
    missing = sorted(like.keys() - a.keys())
    if missing:
        raise KeyError(f"adapter state lacks keys {missing[:3]}")
    return {k: a[k].detach().to(device=v.device, dtype=v.dtype) for k, v in like.items()}


def add(a: State, b: State) -> State:
    _check_keys(a, b)
    return {k: a[k] + b[k] for k in a}


def sub(a: State, b: State) -> State:
    _check_keys(a, b)
    return {k: a[k] - b[k] for k in a}


def scale(a: State, c: float) -> State:
    return {k: v * c for k, v in a.items()}


def weighted_sum(states: Sequence[State], weights: Sequence[float]) -> State:
    """Σ w_i · s_i, accumulated in float64 then cast back, so the result does not depend on order
    more than necessary."""
    if len(states) != len(weights) or not states:
        raise ValueError(f"need one weight per state and at least one state; got {len(states)} states, {len(weights)} weights")
    for s in states[1:]:
        _check_keys(states[0], s)
    out: State = {}
    for k, ref in states[0].items():
        acc = torch.zeros_like(ref, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += s[k].to(torch.float64) * float(w)
        out[k] = acc.to(ref.dtype)
    return out


def norm(a: State) -> float:
    """Global L2 norm over all tensors."""
    if not a:
        return 0.0
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in a.values())))


def num_bytes(a: State) -> int:
    return sum(v.numel() * v.element_size() for v in a.values())
