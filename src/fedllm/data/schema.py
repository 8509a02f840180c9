"""Sample kinds and client containers shared by every data source, the trainer and evaluation.

A conversation is a list of chat messages, so single- and multi-turn instruction data are one type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A data file or record is malformed; the message names the file, client and record."""


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise DataError(f"unknown message role {self.role!r}; expected one of {ROLES}")
        if not isinstance(self.content, str):
            raise DataError(f"message content must be a string, got {type(self.content).__name__}")

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class InstructionSample:
    """A conversation; the SFT loss covers every assistant message."""

    messages: tuple[Message, ...]

    @classmethod
    def single_turn(cls, instruction: str, response: str, system: str | None = None) -> InstructionSample:
        msgs = [Message("system", system)] if system else []
        msgs += [Message("user", instruction), Message("assistant", response)]
        return cls(tuple(msgs))

    @property
    def instruction(self) -> str:
        """The first user message (what length/quality statistics call 'the instruction')."""
        return next(m.content for m in self.messages if m.role == "user")

    @property
    def response(self) -> str:
        """The first assistant message."""
        return next(m.content for m in self.messages if m.role == "assistant")


@dataclass(frozen=True)
class PreferenceSample:
    """A DPO pair: the conversation so far (ending with a user turn), a preferred and a rejected reply."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    @property
    def instruction(self) -> str:
        return next(m.content for m in reversed(self.prompt) if m.role == "user")


Sample = Union[InstructionSample, PreferenceSample]


@dataclass
class ClientData:
    """One client's local data: train and held-out test samples plus free-form metadata."""

    id: str
    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return len(self.train)


POOLED = "pooled"  # fl.local_client=pooled: every client's training data in one client (centralised training)


class FederatedDataset(Mapping[str, ClientData]):
    """Client id -> ClientData, materialised lazily and not cached, so holding a large federation
    costs only its id list; sources that already hold all records in memory pass plain loaders."""

    def __init__(
        self,
        name: str,
        loaders: Mapping[str, Callable[[], ClientData]],
        meta: dict[str, Any] | None = None,
        extra: Mapping[str, Callable[[], ClientData]] | None = None,
    ) -> None:
        self.name = name
        self._loaders = dict(loaders)
        self.meta = dict(meta or {})
        self._extra = dict(extra or {})  # reachable by id but not among client_ids (the pooled client)

    def with_pooled(self, ids: Sequence[str], pooled_id: str = POOLED) -> FederatedDataset:
        """This federation plus a client ``pooled_id`` holding the training samples of ``ids`` together
        (in that order; no test samples): the centralised baseline. It is not one of ``client_ids``, so
        evaluation and client counts see the federation unchanged."""
        ids = list(ids)

        def pooled() -> ClientData:
            return ClientData(pooled_id, [s for cid in ids for s in self[cid].train], [], {"pooled_from": len(ids)})

        return FederatedDataset(self.name, self._loaders, self.meta, {**self._extra, pooled_id: pooled})

    @classmethod
    def from_clients(cls, name: str, clients: list[ClientData], meta: dict[str, Any] | None = None) -> FederatedDataset:
        by_id = {c.id: c for c in clients}
        if len(by_id) != len(clients):
            raise DataError(f"{name}: duplicate client ids")
        return cls(name, {cid: (lambda c=c: c) for cid, c in by_id.items()}, meta)

    @property
    def client_ids(self) -> list[str]:
        return list(self._loaders)

    def __getitem__(self, client_id: str) -> ClientData:
        loader = self._loaders.get(client_id) or self._extra.get(client_id)
        if loader is None:
            raise KeyError(f"{self.name}: no client {client_id!r}")
        return loader()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    def __repr__(self) -> str:
        return f"FederatedDataset({self.name!r}, {len(self)} clients)"
