"""The parts a federated algorithm is composed of, their registries, and what travels between them.

A server round (``fedllm.fl.server.Algorithm``): each client update passes the update transforms
(validation first; a rejected update is dropped with its reason), the aggregator combines the
survivors into one pseudo-gradient Δ, aggregate-stage transforms may change Δ, the server optimizer
moves the global adapter along it, and the client method updates its server-side state (SCAFFOLD's c).
A client round runs the client method's hooks inside local training and the client-stage transforms
on its update before it leaves. Every part is pure tensor math; the engine owns models, data, disks.

Notation (FedLLM-Bench / Reddi et al.): global adapter w, sampled clients S, client result w_i
holding n_i samples, Δ_i = w_i − w, Δ = Σ_S p_i Δ_i.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from fedllm.fl.state import State, match

if TYPE_CHECKING:
    from fedllm.fl.params import FLParams


@dataclass
class ClientUpdate:
    """What one client sends back after a round of local training (the server's view of a reply)."""

    client_id: str
    delta: State  # Δ_i = w_i − w
    num_samples: int  # n_i: trainable samples the client holds
    num_seen: int = 0  # samples processed this round
    num_steps: int = 0  # K: local optimizer steps taken
    lr: float = 0.0  # η_l: local learning rate used this round
    extras: dict[str, State] = field(default_factory=dict)  # client-method payload (e.g. SCAFFOLD "control_delta")


class Rejected(Exception):
    """Raised by a transform's ``on_update``: the update is dropped from the round for this reason."""


@dataclass
class Phase:
    """A second local training in the same round: where it starts, its hooks, and its number of
    steps (None: as many as the first)."""

    start: State
    hooks: ClientHooks
    steps: int | None = None


class ClientHooks:
    """Client half of a method, created fresh for one client and one round.

    ``params`` maps the adapter-state keys to the live trainable parameters of the model.
    The default hooks do nothing (plain local training, as in FedAvg).
    """

    def loss_term(self, params: Mapping[str, Tensor]) -> Tensor | None:
        """An extra term added to every local loss (e.g. FedProx's μ/2‖θ − w‖²)."""
        return None

    def before_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        """Called after backward, before ``optimizer.step()``: may modify ``p.grad`` in place."""

    def after_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        """Called after ``optimizer.step()`` under ``torch.no_grad()``: may modify ``p`` in place."""

    def start(self, global_state: State) -> State:
        """Where local training starts (FedSA-LoRA: the shared A with the client's own B)."""
        return global_state

    def personal_phase(self) -> Phase | None:
        """A second training after the first (Ditto's personal adapter); ``personal_done`` receives
        its result. None: no second phase."""
        return None

    def personal_done(self, personal: State) -> None:
        """The result of ``personal_phase``'s training."""

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        """After the last step: (payload sent to the server, new persistent client state or None)."""
        return {}, None

    def result(self, local: State) -> State:
        """The adapter whose difference from the global one is the update (pFedMe: its local copy of
        w, not the personalised θ; FedSA-LoRA: the shared keys only)."""
        return local

    def outgoing(self, delta: State) -> State:
        """What of the update leaves the client, after the client-stage transforms (a rank-r_i
        client: its r_i components only; the server pads them back)."""
        return delta


# ------------------------------------------------------------------------------ component base


class Options(BaseModel):
    """Typed options of a component (aggregator, transform); unknown keys and NaN/inf are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Component:
    """A server part whose state is checkpointed: ``states`` name ``State | None`` attributes saved
    under ``"<name>/<key>"`` (created lazily, with the adapter's shapes)."""

    name: ClassVar[str] = ""
    #: FLParams fields this component reads (the rest are reported as ignored when set).
    reads: ClassVar[tuple[str, ...]] = ()
    states: ClassVar[tuple[str, ...]] = ()
    #: plain (JSON) attributes saved under ``"<name>.<attr>"`` (counters, a clip norm, a noise seed).
    scalars: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        for s in self.states:
            setattr(self, s, None)

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for s in self.states:
            st = getattr(self, s)
            d.update(pack_states(s, None if st is None else {k: v.detach().clone() for k, v in st.items()}))
        for a in self.scalars:
            d[f"{self.name}.{a}"] = copy.deepcopy(getattr(self, a))
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        for s in self.states:
            st = unpack_state(s, d)
            setattr(self, s, None if st is None else {k: v.detach().clone() for k, v in st.items()})
        for a in self.scalars:
            if f"{self.name}.{a}" in d:
                setattr(self, a, copy.deepcopy(d[f"{self.name}.{a}"]))


class Aggregator(Component):
    """Combines the surviving client deltas of a round into one pseudo-gradient Δ."""

    Options: ClassVar[type[Options]] = Options
    #: False for aggregators that ignore the weights (robust ones: a client can claim any sample count).
    uses_weights: ClassVar[bool] = True

    def __init__(self, options: Options) -> None:
        super().__init__()
        self.options = options

    def aggregate(self, deltas: list[State], weights: list[float]) -> State:
        """Δ from the deltas; ValueError when it cannot combine this many (e.g. Krum's n > 2f + 2)."""
        raise NotImplementedError

    def check_count(self, n: int) -> None:
        """ValueError if ``n`` updates per round can never be aggregated (checked before a run starts)."""


class ServerOptimizer(Component):
    """Moves the global adapter along the aggregated Δ (a pseudo-gradient pointing downhill)."""

    default_lr: ClassVar[float] = 1.0

    def __init__(self, params: FLParams, lr: float | None = None) -> None:
        super().__init__()
        self.params = params
        self.lr = lr if lr is not None else (params.server_lr if params.server_lr is not None else self.default_lr)

    def step(self, w: State, delta: State, rounds_done: int) -> State:
        """New global adapter; ``rounds_done`` counts the server updates applied before this one."""
        raise NotImplementedError

    def used_params(self) -> set[str]:
        """The FLParams keys this optimizer reads under the semantics in force."""
        return set(self.reads)


class ClientMethod(Component):
    """What clients do differently from plain local training (FedProx's term, SCAFFOLD's correction),
    with its server half in the same class: options and payload for the instruction, state kept from
    the replies. ``hooks`` runs on the client from the instruction alone."""

    #: True if a client keeps state between rounds (e.g. SCAFFOLD's c_i); the engine stores it on disk.
    stateful_clients: ClassVar[bool] = False
    #: payload names every reply must carry (validated before aggregation).
    reply_payload: ClassVar[tuple[str, ...]] = ()
    #: True if the client state holds a personalised adapter (``personal_adapter`` builds it).
    personalised: ClassVar[bool] = False

    def __init__(self, params: FLParams, num_clients: int) -> None:
        super().__init__()
        self.params = params
        self.num_clients = num_clients

    def client_options(self) -> dict[str, Any]:
        """Plain (JSON) options the client needs; they travel in the instruction."""
        return {}

    def payload(self, global_state: State) -> dict[str, State]:
        """Tensors the server sends with the global adapter (e.g. SCAFFOLD's c)."""
        return {}

    @classmethod
    def hooks(cls, options: Mapping[str, Any], global_state: State, payload: Mapping[str, State],
              client_state: State | None) -> ClientHooks:
        """The client half for one round, built from the instruction and the client's own state."""
        return ClientHooks()

    def absorb(self, global_state: State, updates: list[ClientUpdate]) -> None:
        """After the server step: update server-side state from the surviving updates."""

    def secure_sum_problem(self) -> str | None:
        """Why the server half needs more than the weighted mean of the updates (so secure aggregation
        cannot serve it), or None."""
        return "needs what each client sends besides its update" if self.reply_payload else None

    def shared(self, global_state: State) -> State:
        """The part of the global adapter the federation shares: sent, updated and aggregated (all of
        it, except for methods that keep some of the adapter local, e.g. FedSA-LoRA's B)."""
        return global_state

    def adapter_problem(self, trainable: State) -> str | None:
        """Why the method cannot train this adapter (e.g. it shares a part the adapter freezes), or None."""
        return None

    @classmethod
    def personal_adapter(cls, global_state: State, client_state: State | None) -> State | None:
        """A client's personalised adapter from the global one and its persistent state; None when
        the method keeps none (its clients use the global adapter). A personalised method's client
        state is its personal adapter unless the method says otherwise."""
        if not cls.personalised or client_state is None:
            return None
        return match(client_state, global_state)


@dataclass(frozen=True)
class Federation:
    """What the server knows of the federation a run trains, for the parts that depend on it
    (privacy: sampling rate, rounds, data size). Absent facts are None."""

    num_clients: int
    clients_per_round: int | None = None
    rounds: int | None = None
    total_samples: int | None = None  # training samples of all clients together
    lr: float | None = None  # the local learning rate (FedLLM-Bench's σ formula uses it)
    sampling: str = "uniform"  # uniform: a fixed-size sample per round; poisson: each client with q = S/N
    seed: int = 0  # the run seed (noise seeds derive from it unless drawn securely)

    def require(self, *names: str, by: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{by} needs the federation's {', '.join(missing)}")


@dataclass(frozen=True)
class ClientContext:
    """What a client-stage transform may use besides the update: the run seed, round and client."""

    seed: int
    round: int
    client_id: str


class Transform(Component):
    """An update transform. ``on_client`` runs on the client before the update leaves (clip, local
    noise, encode); ``on_update`` on the server for each update (decode, validate, clip; raise
    ``Rejected`` to drop it); ``on_aggregate`` on the aggregated Δ (central noise)."""

    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options) -> None:
        super().__init__()
        self.options = options

    @property
    def on_client_side(self) -> bool:
        """Whether the instruction asks clients to run ``on_client`` (default: the class overrides it)."""
        return type(self).on_client.__func__ is not Transform.on_client.__func__  # type: ignore[attr-defined]

    def bind(self, federation: Federation) -> None:
        """Learn the facts of the federation (called once by the server before the first round)."""

    def client_spec(self) -> dict[str, Any]:
        """What the instruction carries for ``on_client``: the name and plain options."""
        return {"name": self.name, **self.options.model_dump()}

    @classmethod
    def on_client(cls, options: Mapping[str, Any], delta: State, ctx: ClientContext) -> State:
        return delta

    def begin_round(self) -> None:
        """Called once per server round, before the updates arrive."""

    def on_update(self, update: ClientUpdate, global_state: State) -> ClientUpdate:
        return update

    def on_aggregate(self, delta: State, updates: list[ClientUpdate]) -> State:
        return delta

    def report(self) -> dict[str, Any]:
        """Numbers this transform reports after each round (privacy: ε, δ, σ …); empty for most."""
        return {}


def pack_states(prefix: str, state: State | None) -> dict[str, Tensor]:
    """Flatten a named State into ``state_dict`` entries (``prefix/key``)."""
    return {} if state is None else {f"{prefix}/{k}": v for k, v in state.items()}


def unpack_state(prefix: str, d: Mapping[str, Any]) -> Optional[State]:
    """Inverse of ``pack_states``; None if nothing was stored under ``prefix``."""
    head = prefix + "/"
    out = {k[len(head):]: v for k, v in d.items() if k.startswith(head) and isinstance(v, torch.Tensor)}
    return out or None
