"""What the server and a client say to each other in a round, as plain data that travels as bytes.

An ``Instruction`` holds everything a client needs for one round: the global adapter, the round,
learning rate and local-training settings, the client method with its options and payload (e.g.
SCAFFOLD's c) and the update transforms to run before the reply leaves. A ``Reply`` holds the update
(Δ_i, sample counts, steps, the method's payload such as Δc_i) and the client's metrics.

On the wire a message is one safetensors blob: its tensors (exact dtype and bits) plus a JSON header
in the metadata, so decoding gives back exactly what was encoded, and the bytes counted in metrics
are the bytes that would cross a network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedllm.fl.base import ClientUpdate
from fedllm.fl.state import State

FORMAT = "fedllm-message/1"


class MessageError(ValueError):
    """Bytes that are not a fedllm message of the expected kind."""


@dataclass
class Instruction:
    """Server → client: one round's work."""

    round: int  # 0-based round index
    client_id: str
    seed: int  # the run seed: the client derives its batch order and dropout seed from (seed, round, client)
    lr: float  # local learning rate of this round
    train: dict[str, Any]  # local-training settings (steps or the dynamic rule, batch size, optimizer, …)
    method: dict[str, Any]  # client method: {"name": ..., **options}
    adapter: State  # the global adapter w
    payload: dict[str, State] = field(default_factory=dict)  # the method's tensors, e.g. {"c": c}
    transforms: list[dict[str, Any]] = field(default_factory=list)  # client-stage update transforms

    def to_bytes(self) -> bytes:
        header = {"round": self.round, "client_id": self.client_id, "seed": self.seed, "lr": self.lr,
                  "train": self.train, "method": self.method, "transforms": self.transforms}
        return _encode("instruction", header, {"adapter": self.adapter, **_prefixed("payload", self.payload)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> Instruction:
        header, groups = _decode("instruction", blob)
        return cls(round=header["round"], client_id=header["client_id"], seed=header["seed"], lr=header["lr"],
                   train=header["train"], method=header["method"], transforms=header["transforms"],
                   adapter=groups.get("adapter", {}), payload=_unprefixed("payload", groups))


@dataclass
class Reply:
    """Client → server: the round's update and what it cost."""

    round: int
    update: ClientUpdate
    metrics: dict[str, Any] = field(default_factory=dict)  # loss, tokens, seconds, per-step losses, …

    def to_bytes(self) -> bytes:
        u = self.update
        header = {"round": self.round, "client_id": u.client_id, "num_samples": u.num_samples,
                  "num_seen": u.num_seen, "num_steps": u.num_steps, "lr": u.lr, "metrics": self.metrics}
        return _encode("reply", header, {"delta": u.delta, **_prefixed("payload", u.extras)})

    @classmethod
    def from_bytes(cls, blob: bytes) -> Reply:
        h, groups = _decode("reply", blob)
        update = ClientUpdate(client_id=h["client_id"], delta=groups.get("delta", {}), num_samples=h["num_samples"],
                              num_seen=h["num_seen"], num_steps=h["num_steps"], lr=h["lr"],
                              extras=_unprefixed("payload", groups))
        return cls(round=h["round"], update=update, metrics=h["metrics"])


def _prefixed(prefix: str, states: dict[str, State]) -> dict[str, State]:
    return {f"{prefix}:{name}": st for name, st in states.items()}


def _unprefixed(prefix: str, groups: dict[str, State]) -> dict[str, State]:
    head = prefix + ":"
    return {name[len(head):]: st for name, st in groups.items() if name.startswith(head)}


def _encode(kind: str, header: dict[str, Any], groups: dict[str, State]) -> bytes:
    """Tensors under positional names (any key survives), their layout and the header in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, str]] = {}
    for group, state in groups.items():
        layout[group] = {}
        for key, t in state.items():
            name = f"t{len(tensors)}"
            layout[group][key] = name
            tensors[name] = t.detach().contiguous()
    meta = {"format": FORMAT, "kind": kind, "header": header, "layout": layout}
    return st_save(tensors, metadata={"fedllm": json.dumps(meta, allow_nan=True, ensure_ascii=False)})


def _decode(kind: str, blob: bytes) -> tuple[dict[str, Any], dict[str, State]]:
    try:
        tensors = st_load(blob)
        meta = json.loads(_metadata(blob)["fedllm"])
    except (SafetensorError, KeyError, ValueError, TypeError) as e:
        raise MessageError(f"not a fedllm {kind} message ({e})") from None
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise MessageError(f"expected a {FORMAT} {kind}, got {meta.get('format')} {meta.get('kind')}")
    groups = {g: {key: tensors[name] for key, name in entries.items()} for g, entries in meta["layout"].items()}
    return meta["header"], groups


def _metadata(blob: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (the format: 8-byte little-endian length, JSON)."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n].decode("utf-8"))["__metadata__"]
