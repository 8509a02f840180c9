"""fedllm's server on Flower: the engine's run loop with its clients reached through Flower's Grid.

The ServerApp runs the same ``Simulation`` as ``fedllm train`` (every method, server optimizer,
transform, checkpoint and resume) with a ``FlowerFleet``: the census comes from the nodes (each
scans its own clients), each round's instructions go to the nodes that hold the sampled clients, and
held-out evaluation is federated (each node evaluates the global adapter on its clients' test
splits; the server pools the numbers exactly as the in-process evaluator does).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Message
from safetensors.torch import save as st_save

from fedllm.config import RunConfig
from fedllm.data.schema import Sample
from fedllm.engine.flower import records as R
from fedllm.engine.flower.node import merge_censuses
from fedllm.engine.client import ClientRuntime, StepCallback
from fedllm.engine.fleet import Census
from fedllm.engine.messages import Instruction, MessageError, Reply
from fedllm.engine.personal import PersonalSpec
from fedllm.engine.progress import Reporter
from fedllm.engine.transport import Exchange
from fedllm.fl.codec import WireSpec
from fedllm.fl.state import State
from fedllm.models.precision import Precision
from fedllm.runs import RunError
from fedllm.train.task import Task

POLL = 0.2  # seconds between pulls for replies


class FlowerFleet:
    """The run's clients on Flower nodes: which node holds which client, refreshed every round (a node
    that reconnects gets a new node id and is asked again what it holds)."""

    encodings = None  # the server holds no client data

    def __init__(self, grid: Any, cfg: RunConfig, run_config: dict[str, Any], reporter: Reporter) -> None:
        self.grid, self.cfg, self.reporter = grid, cfg, reporter
        self.run_config = run_config  # what every request carries: the run's config (YAML) and name
        self.node_of: dict[str, int] = {}  # client id -> node id
        self.asked: set[int] = set()  # nodes whose census we have
        self.trainable: dict[str, int] = {}  # usable training samples per client (SecAgg+ weights)
        self.order: list[str] = []  # the run's clients in federation order (evaluation pools in it)

    # ------------------------------------------------------------------ census
    def census(self, cfg: RunConfig, task: Task) -> Census:
        d = cfg.deploy
        deadline = time.monotonic() + d.node_wait
        nodes = self._nodes()
        while len(nodes) < d.min_nodes and time.monotonic() < deadline:
            time.sleep(POLL)
            nodes = self._nodes()
        if len(nodes) < d.min_nodes:
            raise RunError(f"only {len(nodes)} of deploy.min_nodes={d.min_nodes} nodes connected within "
                           f"deploy.node_wait={d.node_wait:g}s; start the SuperNodes (`fedllm node …`) and retry")
        replies = self._ask(nodes, d.node_wait)
        if not replies:
            raise RunError("no node answered the census; see the SuperNodes' logs")
        census, _ = merge_censuses(list(replies.values()))
        self.trainable, self.order = census.trainable, census.ids
        if not census.ids:
            raise RunError("the connected nodes hold no client of this run")
        self.reporter.info(f"  {len(replies)} nodes hold {len(census.ids)} clients")
        return census

    def _nodes(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def _ask(self, nodes: list[int], timeout: float) -> dict[int, dict[str, Any]]:
        """Ask nodes which clients they hold; remember the answers."""
        msgs = [Message(R.pack({"run": self.run_config}), dst_node_id=n, message_type=R.CENSUS, group_id="census")
                for n in nodes]
        out: dict[int, dict[str, Any]] = {}
        for _, m in replies(self.grid, msgs, timeout, unanswered=False):
            node = m.metadata.src_node_id
            self.asked.add(node)
            why = _failure(m)
            if why is not None:
                self.reporter.warn(f"node {node} cannot serve this run: {why}")
                continue
            header, _ = R.unpack(m.content)
            out[node] = header
            for cid in header["census"]["ids"]:
                self.node_of[cid] = node
        return out

    def refresh(self) -> None:
        """Forget clients of nodes that left; ask nodes that joined (or came back) what they hold."""
        nodes = self._nodes()
        live = set(nodes)
        self.node_of = {c: n for c, n in self.node_of.items() if n in live}
        new = [n for n in nodes if n not in self.asked]
        if new:
            got = self._ask(new, min(self.cfg.deploy.node_wait, 120.0))
            for n, header in got.items():
                self.reporter.info(f"  node {n} joined with clients {', '.join(header['census']['ids'][:8])}")

    def tests(self, ids: list[str]) -> dict[str, list[Sample]]:
        return {}  # held-out data stays on the nodes: see FederatedEvaluator

    def client(self, client_id: str) -> None:
        return None  # a client's data stays on its node

    @property
    def secure(self) -> bool:
        """Whether rounds run under SecAgg+ (the server sees only their weighted mean)."""
        return self.cfg.deploy.secagg is not None

    def transport(self, runtime: ClientRuntime, on_step: StepCallback, wire: WireSpec) -> Any:
        if not self.secure:
            return FlowerTransport(self, wire)
        from fedllm.engine.flower.secagg import SecAggTransport
        from fedllm.fl import build_algorithm

        weighting = build_algorithm(self.cfg.fl, 1).weighting()
        return SecAggTransport(self, wire, self.cfg.deploy.secagg, weighting, dict(self.trainable))


class FlowerTransport:
    """Instructions out to the nodes holding the clients, replies back as they arrive; a client whose
    node is gone, fails or does not answer within ``deploy.round_timeout`` yields a failed exchange."""

    def __init__(self, fleet: FlowerFleet, wire: WireSpec) -> None:
        self.fleet, self.wire = fleet, wire

    def run(self, instructions: Iterable[Instruction]) -> Iterator[Exchange]:
        fleet = self.fleet
        fleet.refresh()
        out: list[Message] = []
        sent: list[tuple[str, int]] = []  # per message: (client, bytes down)
        for ins in instructions:
            node = fleet.node_of.get(ins.client_id)
            if node is None:
                yield Exchange(ins.client_id, None, 0, 0, "no connected node holds this client")
                continue
            blob = ins.to_bytes(self.wire)
            sent.append((ins.client_id, len(blob)))
            out.append(Message(R.pack({"run": fleet.run_config, "client": ins.client_id, "round": ins.round}, blob),
                               dst_node_id=node, message_type=R.TRAIN, group_id=f"round-{ins.round + 1}"))
        for i, m in replies(fleet.grid, out, fleet.cfg.deploy.round_timeout):
            cid, down = sent[i]
            yield (self._exchange(cid, down, m) if m is not None else
                   Exchange(cid, None, down, 0, f"no reply within deploy.round_timeout={fleet.cfg.deploy.round_timeout:g}s"))

    @staticmethod
    def _exchange(cid: str, down: int, m: Message) -> Exchange:
        why = _failure(m)
        if why is not None:
            return Exchange(cid, None, down, 0, why)
        try:
            header, blob = R.unpack(m.content)
            reply = Reply.from_bytes(blob)
        except (ValueError, MessageError) as e:
            return Exchange(cid, None, down, 0, f"malformed reply ({e})")
        if reply.update.client_id != cid:
            return Exchange(cid, None, down, len(blob), f"reply names client {reply.update.client_id!r}")
        reply.metrics["node"] = m.metadata.src_node_id  # where it ran: the node, and the process that served it
        reply.metrics["node_pid"] = header.get("pid")
        return Exchange(cid, reply, down, len(blob))


class FederatedEvaluator:
    """Held-out evaluation on the nodes: each evaluates the global adapter on its clients' test splits;
    the server pools per-client numbers as ``evaluate_heldout`` does (weighted by loss units)."""

    def __init__(self, fleet: FlowerFleet, slot: Any, batch_size: int, cap: int | None) -> None:
        self.fleet, self.slot, self.batch_size, self.cap = fleet, slot, batch_size, cap

    def prepare(self, task: Task, precision: Precision, tests: dict[str, list[Sample]]) -> None:
        self.perplexity = task.objective.perplexity

    def __call__(self, model: Any) -> dict[str, Any]:
        from fedllm.eval.heldout import pool

        sums, _ = self._ask(self.slot.read(), {})
        # pooled in the run's client order, as in-process: the same sums in the same order, the same numbers
        return pool(sums, self.perplexity).to_dict()

    def personal(self, global_state: State, spec: PersonalSpec, round_done: int) -> dict[str, dict[str, Any]]:
        """Each node evaluates its clients' own adapters (built, and fine-tuned, on the node from its
        client store); per client its numbers and the adapter's kind."""
        from fedllm.eval.heldout import pool

        sums, kinds = self._ask(global_state, {"personal": spec.to_dict(), "round": round_done})
        rows = pool(sums, self.perplexity).per_client
        return {c: {**r, "adapter": kinds[c]} for c, r in rows.items()}

    def _ask(self, adapter: State, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """Every node's held-out sums of its clients (in the run's client order), and any adapter kinds."""
        from fedllm.eval.heldout import ClientSums

        fleet = self.fleet
        fleet.refresh()
        blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in adapter.items()})
        by_node: dict[int, list[str]] = {}
        for cid, node in fleet.node_of.items():
            by_node.setdefault(node, []).append(cid)
        msgs = [Message(R.pack({"run": fleet.run_config, "clients": cids, "cap": self.cap, "batch_size": self.batch_size,
                                **extra}, blob), dst_node_id=node, message_type=R.EVALUATE, group_id="eval")
                for node, cids in by_node.items()]
        sums: dict[str, ClientSums] = {}
        kinds: dict[str, str] = {}
        for _, m in replies(fleet.grid, msgs, fleet.cfg.deploy.round_timeout, unanswered=False):
            why = _failure(m)
            if why is not None:
                fleet.reporter.warn(f"evaluation on node {m.metadata.src_node_id} failed: {why}")
                continue
            header, _ = R.unpack(m.content)
            sums.update({c: ClientSums(**v) for c, v in header["sums"].items()})
            kinds.update(header.get("kinds", {}))
        return {c: sums[c] for c in fleet.order if c in sums}, kinds


def replies(grid: Any, msgs: list[Message], timeout: float, unanswered: bool = True) -> Iterator[tuple[int, Any]]:
    """Push ``msgs`` and yield (index in ``msgs``, reply) as replies arrive within ``timeout`` seconds, pulling
    every ``POLL`` (Flower's ``send_and_receive`` sleeps 3 s between pulls in a deployment); then
    (index, None) for each message left unanswered, unless ``unanswered`` is False."""
    pending = {mid: i for i, mid in enumerate(grid.push_messages(msgs))}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(list(pending)))
        for m in got:
            if (i := pending.pop(m.metadata.reply_to_message_id, None)) is not None:
                yield i, m
        if pending and not got:
            time.sleep(POLL)
    if unanswered:
        yield from ((i, None) for i in sorted(pending.values()))


def _failure(m: Message) -> str | None:
    """Why a node's reply carries no result (Flower's error, or the node's own one-line error)."""
    if m.has_error():
        return f"node error {m.error.code}: {str(m.error.reason).strip().splitlines()[-1] if m.error.reason else ''}"
    try:
        header, _ = R.unpack(m.content)
    except ValueError as e:
        return str(e)
    return header.get("error")
