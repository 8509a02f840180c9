"""What the server and a client say to each other in a round, as plain data that travels as bytes.

An ``Instruction`` holds everything a client needs for one round: the global adapter, the round,
learning rate and local-training settings, the client method with its options and payload (e.g.
SCAFFOLD's c) and the update transforms to run before the reply leaves. A ``Reply`` holds the update
(Δ_i, sample counts, steps, the method's payload such as Δc_i) and the client's metrics.

On the wire a message is one safetensors blob: its tensors plus a JSON header in the metadata, so
the bytes counted in metrics are the bytes that would cross a network. By default tensors travel
bit for bit; a ``WireSpec`` (``comm.up`` / ``comm.down``) encodes each group of tensors with the
codec of ``fedllm.fl.codec`` (fp16/bf16, int8, top-k with error feedback) and compresses the whole
blob with zstd. Decoding reads what was used from the message itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
import zstandard
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedllm.fl import codec
from fedllm.fl.base import ClientUpdate
from fedllm.fl.codec import WireSpec
from fedllm.fl.state import State

FORMAT = "fedllm-message/1"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
EXACT = WireSpec()


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
    reply_wire: dict[str, Any] = field(default_factory=dict)  # how the reply travels (a WireSpec; {} = exact)

    def to_bytes(self, wire: WireSpec = EXACT) -> bytes:
        header = {"round": self.round, "client_id": self.client_id, "seed": self.seed, "lr": self.lr,
                  "train": self.train, "method": self.method, "transforms": self.transforms,
                  "reply_wire": self.reply_wire}
        return _encode("instruction", header, {"adapter": self.adapter, **_prefixed("payload", self.payload)}, wire)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Instruction:
        header, groups = _decode("instruction", blob)
        return cls(round=header["round"], client_id=header["client_id"], seed=header["seed"], lr=header["lr"],
                   train=header["train"], method=header["method"], transforms=header["transforms"],
                   reply_wire=header.get("reply_wire", {}), adapter=groups.get("adapter", {}),
                   payload=_unprefixed("payload", groups))


@dataclass
class Reply:
    """Client → server: the round's update and what it cost."""

    round: int
    update: ClientUpdate
    metrics: dict[str, Any] = field(default_factory=dict)  # loss, tokens, seconds, per-step losses, …

    def to_bytes(self, wire: WireSpec = EXACT, residuals: dict[str, State] | None = None) -> bytes:
        """The reply as bytes; ``residuals`` is the sender's error-feedback memory, updated in place."""
        u = self.update
        header = {"round": self.round, "client_id": u.client_id, "num_samples": u.num_samples,
                  "num_seen": u.num_seen, "num_steps": u.num_steps, "lr": u.lr, "metrics": self.metrics}
        return _encode("reply", header, {"delta": u.delta, **_prefixed("payload", u.extras)}, wire, residuals)

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


GROUP_SEP = "\x1f"  # between a tensor group's name and the key in the blob's tensor names


def _encode(kind: str, header: dict[str, Any], groups: dict[str, State], wire: WireSpec = EXACT,
            residuals: dict[str, State] | None = None) -> bytes:
    """Tensors named ``<group>␟<key>`` (any key survives: safetensors names are JSON strings), each
    group's codec layout and the header in the metadata; then zstd if the wire asks for it."""
    tensors: dict[str, torch.Tensor] = {}
    codecs: dict[str, Any] = {}
    order: dict[str, list[str]] = {}  # each exact group's keys in the sender's order (a codec layout has it)
    exact = codec.lossless(wire)
    for group, state in groups.items():
        if exact:
            order[group] = list(state)
        else:
            feedback = residuals is not None and wire.error_feedback
            state, codecs[group], left = codec.encode(state, wire, residuals.get(group) if feedback else None)
            if feedback and left is not None:
                residuals[group] = left
        for key, t in state.items():
            tensors[f"{group}{GROUP_SEP}{key}"] = t.detach().contiguous()
    meta = {"format": FORMAT, "kind": kind, "header": header, "order": order, "codecs": codecs}
    blob = st_save(tensors, metadata={"fedllm": json.dumps(meta, allow_nan=True, ensure_ascii=False)})
    return zstandard.ZstdCompressor(level=wire.zstd).compress(blob) if wire.zstd else blob


def _decode(kind: str, blob: bytes) -> tuple[dict[str, Any], dict[str, State]]:
    try:
        if blob[:4] == ZSTD_MAGIC:
            blob = zstandard.ZstdDecompressor().decompress(blob)
        tensors = st_load(blob)
        meta = json.loads(_metadata(blob)["fedllm"])
    except (SafetensorError, KeyError, ValueError, TypeError, zstandard.ZstdError) as e:
        raise MessageError(f"not a fedllm {kind} message ({e})") from None
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise MessageError(f"expected a {FORMAT} {kind}, got {meta.get('format')} {meta.get('kind')}")
    order, codecs = meta["order"], meta["codecs"]
    raw: dict[str, State] = {g: {} for g in [*order, *codecs]}
    for name, t in tensors.items():
        group, _, key = name.partition(GROUP_SEP)
        if group not in raw:
            raise MessageError(f"{kind} holds tensor {name!r} of an unknown group")
        raw[group][key] = t
    groups: dict[str, State] = {}
    try:  # in the sender's key order: safetensors gives tensors back in no fixed order
        for g, keys in order.items():
            groups[g] = {k: raw[g][k] for k in keys}
        for g, lay in codecs.items():
            groups[g] = codec.decode(raw[g], lay, codec.CodecSpec.model_validate(lay["spec"]))
    except (ValueError, KeyError, TypeError) as e:
        raise MessageError(f"{kind} group {g!r} does not decode ({e})") from None
    return meta["header"], groups


def _metadata(blob: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (the format: 8-byte little-endian length, JSON)."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n].decode("utf-8"))["__metadata__"]
