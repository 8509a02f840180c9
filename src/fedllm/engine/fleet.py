"""Where a run's clients are, as the server sees them: their census (who can train, and how much) and
a transport that reaches them. In-process, the server holds the federation and scans it; in a
deployment, each node scans its own clients and the server learns only the counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fedllm.config import RunConfig
from fedllm.data.schema import ClientData, FederatedDataset, Sample
from fedllm.engine.client import ClientRuntime, StepCallback
from fedllm.engine.transport import InProcessTransport, Transport
from fedllm.fl.codec import WireSpec
from fedllm.paths import cache_root
from fedllm.runs import RunError, run_clients
from fedllm.train.encoding_cache import EncodingCache
from fedllm.train.task import Encoded, Task, WrongKind


@dataclass
class Census:
    """What the server knows of the clients without their data: who they are, how many usable training
    samples each holds, what was left out and why."""

    ids: list[str]
    trainable: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # samples left out, per client
    drop_reasons: dict[str, int] = field(default_factory=dict)  # reason -> samples, over all clients
    excluded: dict[str, str] = field(default_factory=dict)  # client -> why it cannot train

    @property
    def total_trainable(self) -> int:
        return sum(self.trainable.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Census:
        return cls(ids=list(d["ids"]), trainable=dict(d["trainable"]), dropped=dict(d["dropped"]),
                   drop_reasons=dict(d["drop_reasons"]), excluded=dict(d["excluded"]))

    @classmethod
    def merge(cls, parts: Iterable[Census], order: list[str] | None = None) -> Census:
        """One census of several (one per node); ``order`` fixes the client order (else: as they come)."""
        out = cls(ids=[])
        for p in parts:
            out.ids += [c for c in p.ids if c not in out.trainable]
            out.trainable.update(p.trainable)
            out.dropped.update(p.dropped)
            out.excluded.update(p.excluded)
            for why, n in p.drop_reasons.items():
                out.drop_reasons[why] = out.drop_reasons.get(why, 0) + n
        if order is not None:
            rank = {c: i for i, c in enumerate(order)}
            out.ids.sort(key=lambda c: rank.get(c, len(rank)))
        return out


def take_census(ids: list[str], train: Callable[[str], list[Sample]], encode: Callable[[list[Sample]], Encoded],
                max_length: int, dataset: str) -> Census:
    """Scan each client's training samples once (encodings are cached, so rounds do not tokenize again)."""
    census = Census(ids=list(ids))
    for cid in ids:
        samples = train(cid)
        try:
            enc = encode(samples)
        except WrongKind as e:
            raise RunError(f"{dataset}: {e}") from None
        census.trainable[cid] = len(enc)
        if enc.dropped:
            census.dropped[cid] = enc.dropped
            for why, n in enc.reasons.items():
                census.drop_reasons[why] = census.drop_reasons.get(why, 0) + n
        if not enc.features:
            census.excluded[cid] = ("no training samples" if not samples else
                                    f"all {enc.dropped} training samples are unusable at data.max_length="
                                    f"{max_length} ({', '.join(sorted(enc.reasons))})")
    return census


class Fleet(Protocol):
    """The clients of a run, reached by the server."""

    encodings: EncodingCache | None  # the server-side encoding cache, where the server holds the data
    secure: bool  # whether the server receives only each round's weighted mean (secure aggregation)

    def census(self, cfg: RunConfig, task: Task) -> Census: ...

    def tests(self, ids: list[str]) -> dict[str, list[Sample]]:
        """Each client's held-out samples, where the server holds them (else empty)."""
        ...

    def transport(self, runtime: ClientRuntime, on_step: StepCallback, wire: WireSpec) -> Transport: ...

    def client(self, client_id: str) -> ClientData | None:
        """A client's data, where the server holds it (else None)."""
        ...


TransportFactory = Callable[[ClientRuntime, Callable[[str], ClientData], StepCallback, WireSpec], Transport]


class LocalFleet:
    """The simulation's clients: a federation held by this process, run through a transport (the
    in-process one unless another is given)."""

    secure = False

    def __init__(self, dataset: FederatedDataset, transport: TransportFactory | None = None) -> None:
        self.dataset = dataset
        self._transport = transport or InProcessTransport
        self.encodings: EncodingCache | None = None

    def census(self, cfg: RunConfig, task: Task) -> Census:
        self.encodings = EncodingCache(cache_root() / "encodings", task)
        ids = run_clients(cfg, self.dataset)
        return take_census(ids, lambda c: self.dataset[c].train, self.encodings.encode, cfg.data.max_length,
                           cfg.data.dataset)

    def tests(self, ids: list[str]) -> dict[str, list[Sample]]:
        return {cid: self.dataset[cid].test for cid in ids}

    def transport(self, runtime: ClientRuntime, on_step: StepCallback, wire: WireSpec) -> Transport:
        return self._transport(runtime, self.dataset.__getitem__, on_step, wire)

    def client(self, client_id: str) -> ClientData | None:
        return self.dataset[client_id]
