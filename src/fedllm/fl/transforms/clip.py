"""L2 clipping of a client update over all tensors together: Δ ← Δ·min(1, C/‖Δ‖), on the client
before the update leaves (``where: client``) or on the server as it arrives (``where: server``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from fedllm.fl import state as S
from fedllm.fl.base import ClientContext, ClientUpdate, Options, Transform
from fedllm.fl.registries import TRANSFORMS
from fedllm.fl.state import State


class ClipOptions(Options):
    max_norm: float = Field(..., gt=0, description="C: the L2 bound of an update (all adapter tensors together)")
    where: Literal["client", "server"] = Field("client", description="clip on the client before upload, or on the server")


def clip_to_norm(delta: State, max_norm: float) -> State:
    """``delta`` scaled down to L2 norm ``max_norm`` if it is longer (unchanged otherwise)."""
    norm = S.norm(delta)
    return delta if norm <= max_norm else S.scale(delta, max_norm / norm)


@TRANSFORMS.register("clip")
class Clip(Transform):
    Options = ClipOptions
    options: ClipOptions

    @property
    def on_client_side(self) -> bool:
        return self.options.where == "client"

    @classmethod
    def on_client(cls, options: Mapping[str, Any], delta: State, ctx: ClientContext) -> State:
        return clip_to_norm(delta, float(options["max_norm"]))

    def on_update(self, update: ClientUpdate, global_state: State) -> ClientUpdate:
        if self.options.where != "server":
            return update
        update.delta = clip_to_norm(update.delta, self.options.max_norm)
        return update
