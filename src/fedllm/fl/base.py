"""The contract between the engine and a federated algorithm, and the algorithm registry.

An algorithm has a server half (``aggregate``: global adapter + client updates -> new global adapter)
and a client half (``ClientHooks``: extra loss terms and gradient/parameter corrections applied by
the local trainer). Both are pure tensor math; the engine owns models, data, disks and rounds.

Notation (see the FedLLM-Bench / Reddi et al. papers): global adapter w, sampled clients S, client
result w_i holding n_i samples, Δ_i = w_i − w, Δ = Σ_S p_i Δ_i.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.state import State

Compat = Literal["paper", "openfedllm"]
Weighting = Literal["samples", "uniform", "seen"]


@dataclass
class FLParams:
    """Hyper-parameters of every algorithm; each algorithm reads the ones it needs."""

    algorithm: str = "fedavg"
    compat: Compat = "paper"  # "openfedllm" reproduces the FedLLM-Bench/OpenFedLLM code exactly
    weighting: Weighting = "samples"  # p_i ∝ n_i (held samples), uniform, or samples seen this round
    server_lr: float | None = None  # η_s; None -> the algorithm's default (1.0, or 1e-3 for adaptive)
    mu: float = 0.01  # FedProx proximal weight
    beta1: float = 0.9  # first moment / server momentum (FedAvgM, FedAdam, FedYogi); FedLLM-Bench uses 0.5
    beta2: float = 0.99  # second moment (FedAdam, FedYogi)
    tau: float = 1e-3  # adaptivity / epsilon of the adaptive server optimizers
    bias_correction: bool = False  # Adam-style bias correction of m and v (FedAdam, FedYogi)


@dataclass
class ClientUpdate:
    """What one client sends back after a round of local training."""

    client_id: str
    delta: State  # Δ_i = w_i − w
    num_samples: int  # n_i: training samples the client holds
    num_seen: int = 0  # samples processed this round
    num_steps: int = 0  # K: local optimizer steps taken
    lr: float = 0.0  # η_l: local learning rate used this round
    extras: dict[str, State] = field(default_factory=dict)  # algorithm payload (e.g. SCAFFOLD "control_delta")


class ClientHooks:
    """Client half of an algorithm, created fresh for one client and one round.

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

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        """After the last step: (extras sent to the server, new persistent client state or None)."""
        return {}, None


class Algorithm:
    """Base server: weighted mean of client deltas, then ``server_update``. Subclasses override one thing."""

    name: ClassVar[str] = ""
    default_server_lr: ClassVar[float] = 1.0
    #: True if the client keeps state between rounds (e.g. SCAFFOLD's c_i); the engine stores it on disk.
    stateful_clients: ClassVar[bool] = False
    #: True for the Local baseline: one client trains alone and nothing is averaged.
    single_client: ClassVar[bool] = False
    #: Weighting that compat="openfedllm" imposes (OpenFedLLM hard-codes one per method); None: params.weighting.
    compat_weighting: ClassVar[Weighting | None] = None
    #: Names of ``State | None`` attributes (server moments) that ``state_dict`` saves under ``"<name>/<key>"``.
    server_states: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: FLParams, num_clients: int) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if params.compat not in ("paper", "openfedllm"):
            raise ValueError(f"unknown compat {params.compat!r}; expected paper or openfedllm")
        self.params = params
        self.num_clients = num_clients
        self.server_lr = params.server_lr if params.server_lr is not None else self.default_server_lr
        self.rounds_done = 0  # server updates applied so far; part of the checkpointed state
        for name in self.server_states:
            setattr(self, name, None)  # created lazily at the first aggregate (shape of the adapter)

    # ----- client half -----
    def client_hooks(self, global_state: State, client_state: State | None) -> ClientHooks:
        return ClientHooks()

    # ----- server half -----
    def weights(self, updates: list[ClientUpdate]) -> list[float]:
        """Aggregation weights p_i (sum to 1) by ``params.weighting``."""
        if not updates:
            raise ValueError("cannot aggregate zero client updates")
        mode = self.params.weighting
        if self.params.compat == "openfedllm" and self.compat_weighting is not None:
            mode = self.compat_weighting
        if mode == "uniform":
            raw = [1.0] * len(updates)
        elif mode == "samples":
            raw = [float(u.num_samples) for u in updates]
        elif mode == "seen":
            raw = [float(u.num_seen) for u in updates]
        else:
            raise ValueError(f"unknown weighting {mode!r}; expected samples, uniform or seen")
        total = sum(raw)
        if total <= 0:
            raise ValueError(f"aggregation weights ({mode}) sum to {total}; every client reported 0")
        return [r / total for r in raw]

    def mean_delta(self, updates: list[ClientUpdate]) -> State:
        return S.weighted_sum([u.delta for u in updates], self.weights(updates))

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        """New global adapter from the old one and this round's updates."""
        new = self.server_update(global_state, self.mean_delta(updates), updates)
        self.rounds_done += 1
        return new

    def server_update(self, global_state: State, delta: State, updates: list[ClientUpdate]) -> State:
        """FedAvg: w + η_s·Δ."""
        return {k: global_state[k] + self.server_lr * delta[k] for k in global_state}

    # ----- checkpointing -----
    def state_dict(self) -> dict[str, Tensor | int | float]:
        """Flat server state: tensors under prefixed keys (e.g. ``"m/<param>"``) and scalars."""
        d: dict[str, Tensor | int | float] = {"rounds_done": self.rounds_done}
        for name in self.server_states:
            st = getattr(self, name)
            d.update(pack_states(name, None if st is None else S.clone(st)))
        return d

    def load_state_dict(self, d: Mapping[str, Tensor | int | float]) -> None:
        self.rounds_done = int(d["rounds_done"])
        for name in self.server_states:
            st = unpack_state(name, d)
            setattr(self, name, None if st is None else S.clone(st))


def pack_states(prefix: str, state: State | None) -> dict[str, Tensor]:
    """Flatten a named State into ``state_dict`` entries (``prefix/key``)."""
    return {} if state is None else {f"{prefix}/{k}": v for k, v in state.items()}


def unpack_state(prefix: str, d: Mapping[str, Any]) -> State | None:
    """Inverse of ``pack_states``; None if nothing was stored under ``prefix``."""
    head = prefix + "/"
    out = {k[len(head):]: v for k, v in d.items() if k.startswith(head) and isinstance(v, torch.Tensor)}
    return out or None


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: register an algorithm under a unique lower-case name."""

    def deco(cls: type[Algorithm]) -> type[Algorithm]:
        if name != name.lower() or not name.isidentifier():
            raise ValueError(f"algorithm name {name!r} must be a lower-case identifier")
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} registered twice ({ALGORITHMS[name].__module__}, {cls.__module__})")
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return deco


def build_algorithm(params: FLParams, num_clients: int) -> Algorithm:
    try:
        cls = ALGORITHMS[params.algorithm]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {params.algorithm!r}; known: {', '.join(sorted(ALGORITHMS))}"
        ) from None
    return cls(params, num_clients)
