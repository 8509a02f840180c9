"""Validation of every client update before aggregation: a malformed, non-finite or oversized
update is dropped with its reason, so nothing non-finite reaches the global adapter."""

from __future__ import annotations

import math
from typing import Optional

import torch
from pydantic import Field

from fedllm.fl import state as S
from fedllm.fl.base import ClientUpdate, Options, Rejected, Transform
from fedllm.fl.registries import TRANSFORMS
from fedllm.fl.state import State


class ValidateOptions(Options):
    max_norm: Optional[float] = Field(None, gt=0, description="drop updates whose L2 norm (all tensors) exceeds this")
    payload: tuple[str, ...] = Field((), description="payload names every update must carry, shaped like the adapter")


def _check_state(what: str, state: object, like: State) -> None:
    """Keys, shapes and finiteness of one adapter-shaped state against the global adapter."""
    if not isinstance(state, dict):
        raise Rejected(f"{what} is not a mapping of tensors")
    missing, extra = sorted(like.keys() - state.keys()), sorted(state.keys() - like.keys())
    if missing or extra:
        raise Rejected(f"{what} keys differ from the adapter's: missing {missing[:2]} ({len(missing)}), "
                       f"unexpected {extra[:2]} ({len(extra)})")
    for k, ref in like.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise Rejected(f"{what}[{k}] is not a floating-point tensor")
        if t.shape != ref.shape:
            raise Rejected(f"{what}[{k}] has shape {tuple(t.shape)}, the adapter {tuple(ref.shape)}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise Rejected(f"{what}[{k}] has {bad} non-finite value(s)")


@TRANSFORMS.register("validate")
class Validate(Transform):
    """Keys and shapes as the global adapter's, finite values, counts ≥ 0, norm within the bound.
    The server runs it first on every update; ``fl.max_update_norm`` sets the bound."""

    Options = ValidateOptions
    options: ValidateOptions

    def on_update(self, update: ClientUpdate, global_state: State) -> ClientUpdate:
        for name in ("num_samples", "num_seen", "num_steps"):
            value = getattr(update, name)
            if not isinstance(value, int) or value < 0:
                raise Rejected(f"{name} = {value!r} is not a count")
        if not isinstance(update.lr, (int, float)) or not math.isfinite(update.lr):
            raise Rejected(f"lr = {update.lr!r} is not finite")
        _check_state("update", update.delta, global_state)
        for name in self.options.payload:
            if name not in update.extras:
                raise Rejected(f"missing payload {name!r}")
            _check_state(f"payload {name!r}", update.extras[name], global_state)
        if self.options.max_norm is not None:
            norm = S.norm(update.delta)
            if norm > self.options.max_norm:
                raise Rejected(f"update norm {norm:.4g} exceeds fl.max_update_norm={self.options.max_norm:g}")
        return update
