"""The server of a federated algorithm, composed of parts: update transforms (validation first),
an aggregator, a server optimizer and a client method, each with its state in checkpoints.

One round: every update passes the transforms (a rejected one is dropped with its reason), the
survivors are weighted and aggregated into Δ, aggregate-stage transforms may change Δ, the optimizer
moves w along Δ, and the client method updates its server state (SCAFFOLD's c). A round where no
update survives, or whose step would leave a non-finite value, changes nothing and says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedllm.fl.base import ClientHooks, ClientUpdate, Federation, Rejected
from fedllm.fl.hetero_lora import RANK_KEY, FloraMerge, RankPlan, method_problem, pad, rank_hooks
from fedllm.fl.registries import AGGREGATORS, ALGORITHMS, CLIENT_METHODS, SERVER_OPTIMIZERS, TRANSFORMS, build_component, resolve_spec
from fedllm.fl.params import FLParams, Weighting, dp_transform
from fedllm.fl.state import State
from fedllm.fl.transforms.validate import Validate, ValidateOptions

ALWAYS_READ = frozenset({"algorithm", "compat", "aggregator", "server_optimizer", "transforms", "max_update_norm"})


@dataclass
class RoundOutcome:
    """What the server did with one round's updates."""

    state: State | None  # the new global adapter; None when the round was skipped
    accepted: list[str] = field(default_factory=list)  # client ids aggregated, in order
    weights: list[float] = field(default_factory=list)  # their aggregation weights
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (client id, reason)
    skipped: str | None = None  # why the global adapter did not move


class Algorithm:
    """A method preset with its parts; ``fl.aggregator`` / ``fl.server_optimizer`` replace parts."""

    def __init__(self, params: FLParams, num_clients: int, federation: Federation | None = None,
                 ranks: RankPlan | None = None) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        self.params = params
        self.num_clients = num_clients
        self.preset = ALGORITHMS.lookup(params.algorithm)
        self.aggregator_spec = params.aggregator or resolve_spec(AGGREGATORS, self.preset.aggregator)
        self.aggregator = build_component(AGGREGATORS, self.aggregator_spec)
        optimizer_cls = SERVER_OPTIMIZERS.lookup(params.server_optimizer or self.preset.optimizer)
        self.optimizer = optimizer_cls(params, lr=self.preset.pinned.get("server_lr"))
        self.method = CLIENT_METHODS.lookup(self.preset.method)(params, num_clients)
        validate = Validate(ValidateOptions(max_norm=params.max_update_norm, payload=self.method.reply_payload))
        self.transform_specs = [dict(s) for s in params.transforms]
        self.transforms = [validate, *(build_component(TRANSFORMS, s) for s in self.transform_specs)]
        self.dp = TRANSFORMS.lookup(dp_transform(params.dp.mode))(params.dp) if params.dp is not None else None
        if self.dp is not None:
            self.transforms.append(self.dp)  # last: it clips and noises what every other transform left
        federation = federation or Federation(num_clients)
        for t in self.transforms:
            t.bind(federation)
        if ranks is not None and (why := method_problem(ranks.mode, params)) is not None:
            raise ValueError(why)
        self.ranks = ranks  # heterogeneous client ranks (lora.hetero); None: every client trains the whole adapter
        self.merge = FloraMerge(ranks, self.optimizer.lr) if ranks is not None and ranks.mode == "flora" else None
        self.rounds_done = 0  # server updates applied so far; part of the checkpointed state

    # ----- what the parts say about the method
    @property
    def name(self) -> str:
        return self.params.algorithm

    @property
    def single_client(self) -> bool:
        """The Local baseline: one client trains alone and nothing is averaged."""
        return self.preset.single_client

    @property
    def stateful_clients(self) -> bool:
        return self.method.stateful_clients

    @property
    def server_lr(self) -> float:
        return self.optimizer.lr

    def describe(self) -> dict[str, Any]:
        """The parts in force, for the run's setup event."""
        return {"aggregator": self.aggregator_spec, "server_optimizer": self.optimizer.name,
                "client_method": self.method.name, "server_lr": self.server_lr,
                "weighting": self.weighting() if self.aggregator.uses_weights and not self.dp_replaces_mean else None,
                "transforms": self.transform_specs, "dp": self.report().get("dp"),
                **({"ranks": self.ranks.describe()} if self.ranks is not None else {})}

    @property
    def dp_replaces_mean(self) -> bool:
        """DP-FedAvg averages the clipped updates itself (uniformly, over the expected clients)."""
        return self.params.dp is not None and self.params.dp.mode == "dp-fedavg"

    def report(self) -> dict[str, Any]:
        """What the parts report after a round (privacy: ε, δ, noise …)."""
        out = {"dp": self.dp.report()} if self.dp is not None else {}
        return {**out, "flora": self.merge.report()} if self.merge is not None else out

    # ----- client half: what the instruction carries
    def client_method(self, client_id: str | None = None) -> dict[str, Any]:
        """The client method's name and options (with heterogeneous ranks: ``client_id``'s rank and scaling)."""
        spec = {"name": self.method.name, **self.method.client_options()}
        if self.ranks is not None and client_id is not None:
            spec[RANK_KEY] = self.ranks.client_spec(client_id)
        return spec

    def client_transforms(self) -> list[dict[str, Any]]:
        """Specs of the transforms the client runs on its update before it leaves."""
        return [t.client_spec() for t in self.transforms[1:] if t.on_client_side]

    def client_payload(self, global_state: State) -> dict[str, State]:
        """The method's tensors (and FLoRA's merged ΔW, which clients add to their base)."""
        payload = self.method.payload(global_state)
        return {**payload, **self.merge.payload()} if self.merge is not None else payload

    @property
    def personalised(self) -> bool:
        """Whether each client keeps a personalised adapter (Ditto, pFedMe, FedSA-LoRA)."""
        return self.method.personalised

    def client_hooks(self, global_state: State, client_state: State | None) -> ClientHooks:
        """The client half in this process (what a client builds from its instruction)."""
        return build_client_hooks(self.client_method(), global_state, self.client_payload(global_state), client_state)

    # ----- server half
    def weighting(self) -> Weighting:
        if self.params.compat == "openfedllm" and self.preset.openfedllm_weighting is not None:
            return self.preset.openfedllm_weighting
        return self.params.weighting

    def weights(self, updates: list[ClientUpdate]) -> list[float]:
        """Aggregation weights p_i (sum to 1) by the weighting in force."""
        if not updates:
            raise ValueError("cannot aggregate zero client updates")
        mode = self.weighting()
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

    def step(self, global_state: State, updates: list[ClientUpdate]) -> RoundOutcome:
        """Transform, validate and aggregate the updates, then move the global adapter."""
        accepted: list[ClientUpdate] = []
        dropped: list[tuple[str, str]] = []
        for t in self.transforms:
            t.begin_round()
        shared = self.method.shared(global_state)
        if self.ranks is not None:  # a rank-r_i client sends its r_i components: zero-padded back to r
            updates = [dataclasses.replace(u, delta=pad(u.delta, shared, self.ranks.of(u.client_id))) for u in updates]
        for u in updates:
            try:
                for t in self.transforms:
                    u = t.on_update(u, shared)
            except Rejected as e:
                dropped.append((u.client_id, str(e)))
                continue
            accepted.append(u)
        if not updates:
            return RoundOutcome(None, skipped="no client was sampled")
        if not accepted:
            return RoundOutcome(None, dropped=dropped, skipped="no client update survived validation")
        n = len(accepted)
        ids = [u.client_id for u in accepted]
        weights = self.weights(accepted) if self.aggregator.uses_weights else [1.0 / n] * n
        if self.merge is not None:  # FLoRA: the stacked products go into the base; the adapter starts afresh
            return self._merge(global_state, accepted, ids, weights, dropped)
        try:
            delta = self.aggregator.aggregate([u.delta for u in accepted], weights)
        except ValueError as e:  # e.g. too few survivors for Krum after drops
            return RoundOutcome(None, ids, weights, dropped, f"aggregator {self.aggregator.name}: {e}")
        for t in self.transforms:
            delta = t.on_aggregate(delta, accepted)
        before = self.state_dict()
        new_state = {**global_state, **self.optimizer.step(shared, delta, self.rounds_done)}
        if not all_finite(new_state):
            self.load_state_dict(before)
            return RoundOutcome(None, ids, weights, dropped, "the server step gave non-finite values")
        self.method.absorb(shared, accepted)
        self.rounds_done += 1
        return RoundOutcome(new_state, ids, weights, dropped)

    def _merge(self, global_state: State, accepted: list[ClientUpdate], ids: list[str], weights: list[float],
               dropped: list[tuple[str, str]]) -> RoundOutcome:
        """FLoRA's server step: the merged ΔW absorbs the round's stacked factors; the adapter stays."""
        assert self.merge is not None
        before = self.state_dict()
        self.merge.absorb(global_state, accepted, weights)
        if not all_finite(self.merge.merged or {}):
            self.load_state_dict(before)
            return RoundOutcome(None, ids, weights, dropped, "the merged update has non-finite values")
        self.rounds_done += 1
        return RoundOutcome(global_state, ids, weights, dropped)

    def secure_sum_problem(self) -> str | None:
        """Why the server step cannot be made from the round's weighted mean alone (as under secure
        aggregation, where no single update is seen), or None."""
        if self.single_client:
            return "the Local baseline has nothing to aggregate"
        if self.ranks is not None:
            return f"lora.hetero={self.ranks.mode} takes each client's r_i components (of different sizes) apart"
        if self.aggregator.name != "mean":
            return f"the {self.aggregator.name} aggregator needs every update, not only their weighted mean"
        if (why := self.method.secure_sum_problem()) is not None:
            return f"{self.params.algorithm} {why} (client method {self.method.name})"
        if self.weighting() not in ("samples", "uniform"):
            return f"weighting {self.weighting()} is known only after training; use samples or uniform"
        server_side = [t.name for t in self.transforms[1:] if not t.on_client_side]
        if server_side:
            return f"transforms {server_side} act on each update at the server (client-side ones such as dp-local work)"
        if self.params.max_update_norm is not None:
            return "fl.max_update_norm checks each update, which secure aggregation hides"
        return None

    def step_secure(self, global_state: State, mean_delta: State, accepted: list[ClientUpdate]) -> RoundOutcome:
        """The server step from a weighted mean the server could not take apart (secure aggregation):
        ``accepted`` carry counts only. The mean must fit the adapter and be finite."""
        ids = [u.client_id for u in accepted]
        if not accepted:
            return RoundOutcome(None, skipped="no client completed the secure aggregation")
        weights = self.weights(accepted)
        for t in self.transforms[1:]:  # client-side transforms only (secure_sum_problem): their bookkeeping
            t.begin_round()
            for u in accepted:
                t.on_update(u, global_state)
        if mean_delta.keys() != global_state.keys() or not all_finite(mean_delta):
            return RoundOutcome(None, ids, weights, [], "the securely aggregated update is malformed or non-finite")
        before = self.state_dict()
        new_state = self.optimizer.step(global_state, mean_delta, self.rounds_done)
        if not all_finite(new_state):
            self.load_state_dict(before)
            return RoundOutcome(None, ids, weights, [], "the server step gave non-finite values")
        self.rounds_done += 1
        return RoundOutcome(new_state, ids, weights, [])

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> State:
        """New global adapter from the old one and this round's updates; ValueError if none is usable."""
        outcome = self.step(global_state, updates)
        if outcome.state is None:
            reasons = "; ".join(f"{cid}: {why}" for cid, why in outcome.dropped)
            raise ValueError(f"round skipped: {outcome.skipped}" + (f" ({reasons})" if reasons else ""))
        return outcome.state

    # ----- checkpointing
    def _parts(self) -> list[Any]:
        return [self.aggregator, self.optimizer, self.method, *self.transforms, *([self.merge] if self.merge else [])]

    def state_dict(self) -> dict[str, Tensor | int | float]:
        """Flat server state: ``rounds_done`` and every part's tensors under ``"<state>/<key>"``."""
        d: dict[str, Tensor | int | float] = {"rounds_done": self.rounds_done}
        for part in self._parts():
            for k, v in part.state_dict().items():
                if k in d:
                    raise RuntimeError(f"server state key {k!r} is used by two parts ({type(part).__name__})")
                d[k] = v
        return d

    def load_state_dict(self, d: Mapping[str, Tensor | int | float]) -> None:
        self.rounds_done = int(d["rounds_done"])
        for part in self._parts():
            part.load_state_dict(d)


def build_client_hooks(method: Mapping[str, Any], global_state: State, payload: Mapping[str, State],
                       client_state: State | None) -> ClientHooks:
    """The client half of a round from the instruction's method spec (no server object involved)."""
    if RANK_KEY in method:  # a rank-r_i client: the method's hooks see its r_i components of the adapter
        rest = {k: v for k, v in method.items() if k != RANK_KEY}
        return rank_hooks(method[RANK_KEY], global_state, lambda view: build_client_hooks(rest, view, payload, client_state))
    options = {k: v for k, v in method.items() if k != "name"}
    return CLIENT_METHODS.lookup(method["name"]).hooks(options, global_state, payload, client_state)


def all_finite(state: State) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values())


def build_algorithm(params: FLParams, num_clients: int, federation: Federation | None = None,
                    ranks: RankPlan | None = None) -> Algorithm:
    return Algorithm(params, num_clients, federation, ranks)


def ignored_params(params: FLParams) -> list[str]:
    """One line per FLParams key set away from its default that the method in force does not read."""
    alg = Algorithm(dataclasses.replace(params, dp=None), num_clients=1)
    used = set(ALWAYS_READ) | {"dp"} | alg.optimizer.used_params() | set(alg.method.reads)
    used -= set(alg.preset.pinned)
    dp_mean = params.dp is not None and params.dp.mode == "dp-fedavg"
    if alg.aggregator.uses_weights and alg.weighting() == params.weighting and not dp_mean:
        used.add("weighting")
    defaults = FLParams()
    out = []
    for f in dataclasses.fields(FLParams):
        value = getattr(params, f.name)
        if f.name not in used and value != getattr(defaults, f.name):
            out.append(f"fl.{f.name}={value} is ignored by {params.algorithm}"
                       + (f" (compat: {params.compat})" if params.compat != "paper" else ""))
    return out
