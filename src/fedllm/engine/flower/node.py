"""A node's side of a deployment, without Flower: which clients it holds, and its answers to the
server's three requests (census, a client's round, evaluation). Flower's ClientApp calls these with
bytes and plain dicts; each request may run in a fresh process, so everything a node keeps between
requests is on disk (the encoding cache and the round-versioned client store)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import load_file

from fedllm.config import RunConfig
from fedllm.data.schema import ClientData, FederatedDataset
from fedllm.engine.client import ClientRuntime, serve_round
from fedllm.engine.fleet import Census, take_census
from fedllm.engine.store import ClientStateStore
from fedllm.fl.state import State
from fedllm.paths import cache_root
from fedllm.runs import RunError, load_federation, run_clients
from fedllm.seeding import derive_seed
from fedllm.train.encoding_cache import EncodingCache

__all__ = ["NodeData", "NodeError", "RoundStore", "Node"]


class NodeError(RuntimeError):
    """The node cannot serve the request (one line naming what is wrong)."""


@dataclass(frozen=True)
class NodeData:
    """Which clients a node holds, from its ``--node-config``:

    * ``partition-id`` / ``num-partitions``: clients i, i+N, i+2N, … of the run's federation (the
      keys Flower's simulation engine sets for every virtual node);
    * ``clients``: explicit client ids, comma-separated;
    * ``data``: a federation file on this node (e.g. a FedLLM-Bench JSON of its own users); with
      neither of the above it holds every client in it.
    """

    data: str | None = None
    clients: tuple[str, ...] | None = None
    partition: tuple[int, int] | None = None
    state_dir: str | None = None

    @classmethod
    def from_node_config(cls, nc: dict[str, Any]) -> NodeData:
        known = {"partition-id", "num-partitions", "clients", "data", "state-dir"}
        if unknown := sorted(set(nc) - known):
            raise NodeError(f"--node-config has unknown keys {unknown}; known: {sorted(known)}")
        partition = None
        if "partition-id" in nc or "num-partitions" in nc:
            try:
                pid, num = int(nc["partition-id"]), int(nc["num-partitions"])
            except (KeyError, TypeError, ValueError):
                raise NodeError("--node-config needs both partition-id and num-partitions as integers") from None
            if not 0 <= pid < num:
                raise NodeError(f"--node-config partition-id={pid} is not in 0..{num - 1}")
            partition = (pid, num)
        clients = None
        if "clients" in nc:
            clients = tuple(c.strip() for c in str(nc["clients"]).split(",") if c.strip())
            if not clients:
                raise NodeError("--node-config clients= names no client")
        data = str(nc["data"]) if "data" in nc else None
        if data is not None and not Path(data).expanduser().exists():
            raise NodeError(f"--node-config data={data}: no such file on this node")
        return cls(data=data, clients=clients, partition=partition,
                   state_dir=str(nc["state-dir"]) if "state-dir" in nc else None)

    def select(self, cfg: RunConfig, fed: FederatedDataset) -> list[tuple[int, str]]:
        """(position in the federation, client id) of every client this node serves."""
        ids = run_clients(cfg, fed) if self.data is None else list(fed.client_ids)
        chosen = list(enumerate(ids))
        if self.clients is not None:
            missing = [c for c in self.clients if c not in ids]
            if missing:
                raise NodeError(f"--node-config clients: {missing} are not clients of {self.data or cfg.data.dataset}")
            chosen = [(i, c) for i, c in chosen if c in self.clients]
        if self.partition is not None:
            pid, num = self.partition
            chosen = [(i, c) for i, c in chosen if i % num == pid]
        return chosen


class RoundStore(ClientStateStore):
    """A node's client state (SCAFFOLD's c_i, error-feedback residuals), one file per client, kind and
    round. A round reads the newest version written before it, so a server that resumes from an
    older checkpoint finds every client's state as it was then; ``keep`` versions are kept."""

    def __init__(self, root: Path, round_idx: int, keep: int) -> None:
        super().__init__(root)
        self.round, self.keep = round_idx, keep

    def _path(self, client_id: str, kind: str) -> Path:  # where this round writes
        return self.root / f"{self._stem(client_id, kind)}.r{self.round:06d}.safetensors"

    def _versions(self, client_id: str, kind: str) -> list[tuple[int, Path]]:
        stem = self._stem(client_id, kind)
        found = (re.fullmatch(rf"{stem}\.r(\d+)\.safetensors", p.name) for p in self.root.glob(f"{stem}.r*.safetensors"))
        return sorted((int(m.group(1)), self.root / m.group(0)) for m in found if m)

    def get(self, client_id: str, kind: str = "method") -> State | None:
        before = [p for r, p in self._versions(client_id, kind) if r < self.round]
        return load_file(str(before[-1])) if before else None

    def put(self, client_id: str, state: State, kind: str = "method") -> None:
        super().put(client_id, state, kind)  # atomic, one clear error on a full disk
        versions = self._versions(client_id, kind)
        for _, old in versions[: max(len(versions) - self.keep, 0)]:
            old.unlink(missing_ok=True)


class Node:
    """A node serving one run: the run's config, its own clients' data and (lazily) the base model."""

    def __init__(self, cfg: RunConfig, data: NodeData) -> None:
        self.cfg, self.spec = cfg, data
        try:
            if data.data is not None:
                from fedllm.data.sources import load_dataset

                self.federation = load_dataset(str(Path(data.data).expanduser()), test_fraction=cfg.data.test_fraction,
                                               seed=cfg.seed)
            else:
                self.federation = load_federation(cfg)
        except (RunError, OSError, ValueError) as e:
            raise NodeError(f"cannot load this node's data: {e}") from None
        self.clients = self.spec.select(cfg, self.federation)
        if not self.clients:
            raise NodeError("this node holds no client of the run (check --node-config)")
        self._session: Any = None
        self._task: Any = None

    # the base model and task are loaded only by requests that compute
    @property
    def session(self) -> Any:
        if self._session is None:
            from fedllm.engine.simulation import Session

            self._session = Session.create(self.cfg)
            self._session.slot.initial_state(derive_seed(self.cfg.seed, "lora-init"))  # FFA-LoRA's frozen A, as the server's
        return self._session

    @property
    def task(self) -> Any:
        if self._task is None:
            from fedllm.train.task import Task

            self._task = Task.create(self.cfg.train.objective, self.cfg.data.template, self.session.base.tokenizer,
                                     self.cfg.data.max_length, **self.cfg.objective_options())
        return self._task

    def client(self, client_id: str) -> ClientData:
        if client_id not in {c for _, c in self.clients}:
            raise NodeError(f"client {client_id!r} is not held by this node")
        return self.federation[client_id]

    def state_root(self) -> Path:
        base = Path(self.spec.state_dir).expanduser() if self.spec.state_dir else cache_root() / "node-state"
        return base / self.cfg.name

    # ---------------------------------------------------------------- the three requests
    def census(self) -> dict[str, Any]:
        """Who this node holds and how many usable samples each has; positions order them at the server."""
        enc = EncodingCache(cache_root() / "encodings", self.task)
        ids = [c for _, c in self.clients]
        census = take_census(ids, lambda c: self.federation[c].train, enc.encode, self.cfg.data.max_length,
                             self.spec.data or self.cfg.data.dataset)
        return {"census": census.to_dict(), "positions": {c: i for i, c in self.clients}}

    def train(self, blob: bytes, client_id: str, round_idx: int) -> bytes:
        """One client's round: the instruction's bytes in, the reply's bytes out."""
        return serve_round(blob, self.client(client_id), self.runtime(round_idx))

    def runtime(self, round_idx: int) -> ClientRuntime:
        """The client runtime of a round: the shared slot and this node's client store as of that round."""
        keep = max(self.cfg.checkpoint.every, 1) * self.cfg.checkpoint.keep + 1
        s = self.session
        return ClientRuntime(s.slot, self.task, s.base.precision, RoundStore(self.state_root(), round_idx, keep),
                             EncodingCache(cache_root() / "encodings", self.task), view=s.view)

    def evaluate(self, adapter_blob: bytes, client_ids: list[str], cap: int | None, batch_size: int,
                 personal: dict[str, Any] | None = None, round_done: int = 0) -> dict[str, Any]:
        """Held-out sums (loss and the objective's statistics) of the given adapter on these clients' test
        splits; the server pools them with every other node's, as the in-process evaluator does. With
        ``personal`` (a PersonalSpec), each client's own adapter instead, built from the client store
        as it was after ``round_done`` rounds, with its kind."""
        from fedllm.eval.heldout import encode_tests, heldout_sums

        s = self.session
        global_state = st_load(adapter_blob)
        feats = encode_tests(self.task, {c: self.client(c).test for c in client_ids}, cap)
        if personal is None:
            s.slot.load(global_state)
            sums = heldout_sums(s.slot.model, self.task.objective, feats, self.task.pad_id, s.base.precision, batch_size)
            return {"sums": {c: asdict(v) for c, v in sums.items()}}
        from fedllm.engine.personal import PersonalSpec, own_adapter

        spec = PersonalSpec(**personal)
        rt = self.runtime(round_done)
        out, kinds = {}, {}
        for cid in feats:
            adapter, kinds[cid] = own_adapter(spec, global_state, self.client(cid), rt, rt.store)
            s.slot.load(adapter)
            got = heldout_sums(s.slot.model, self.task.objective, {cid: feats[cid]}, self.task.pad_id,
                               s.base.precision, batch_size)
            out.update({c: asdict(v) for c, v in got.items()})
        return {"sums": out, "kinds": kinds}


def merge_censuses(replies: list[dict[str, Any]]) -> tuple[Census, dict[str, int]]:
    """The run's census from the nodes' replies, clients in federation order (position, then id)."""
    positions: dict[str, int] = {}
    for r in replies:
        positions.update(r["positions"])
    order = sorted(positions, key=lambda c: (positions[c], c))
    return Census.merge([Census.from_dict(r["census"]) for r in replies], order), positions
