"""Heterogeneous LoRA ranks across clients, as pure tensor math on adapter states: zero-padding
(HeteroLoRA, Cho et al. 2024) and stacking (FLoRA, Wang et al. 2024).

The server's adapter has rank r (``lora.r``); client i trains rank r_i ≤ r. A rank component is a
row of each LoRA A (r × in) and the matching column of each B (out × r).

pad: client i trains the first r_i components of the global adapter; the others start at zero and
stay exactly zero (their gradients vanish, and are masked besides), its update is zero there, it
sends only its r_i components and the server zero-pads them back. The aggregate is the aggregator's
(the weighted mean by default) of the padded updates, and the server optimizer steps as usual.

flora: every round each client trains a fresh rank-r_i LoRA (the first r_i components of the run's
seeded initial adapter, scaled α/r_i as peft scales a rank-r_i LoRA) on the current merged base and
sends its factors. The server stacks them on the rank axis, A = concat_i(η·p_i·s_i·A_i) and
B = concat_i(B_i), so that B·A = η·Σ p_i·s_i·B_i·A_i exactly, and merges the product into the base:
the global model is W0 + ΔW, ΔW the sum of every round's stacked products. ΔW of each target module
is kept as its stacked factors while they are smaller than the dense matrix, else dense; it is the
server state a checkpoint holds and what the next round's instructions carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from torch import Tensor

from fedllm.fl.base import ClientHooks, ClientUpdate, Component
from fedllm.fl.registries import ALGORITHMS
from fedllm.fl.state import State

if TYPE_CHECKING:
    from fedllm.fl.params import FLParams

Mode = Literal["pad", "flora"]
RankSpec = Union[list[int], dict[str, int], None]

#: the instruction's client-method spec carries a heterogeneous client's rank under this key
RANK_KEY = "lora_rank"
#: the instruction payload group with FLoRA's merged ΔW
MERGED = "flora_merged"
#: client methods a rank-r_i client can run (the others keep or send adapter-shaped state of rank r)
METHODS = ("plain", "fedprox")
#: how the merged ΔW of a module is stored: its stacked factors, or dense
FACTOR_B, FACTOR_A, DENSE = ".delta_B", ".delta_A", ".delta_W"


# ------------------------------------------------------------------------------ ranks and components


def lora_part(key: str) -> tuple[str, str] | None:
    """(module, "A" or "B") for a LoRA factor key (peft's names), None for any other key."""
    for part in ("A", "B"):
        tag = f".lora_{part}."
        if tag in key:
            return key[:key.index(tag)], part
    return None


def rank_axis(key: str) -> int | None:
    """The rank axis of a LoRA factor (A: rows, B: columns); None for any other key."""
    part = lora_part(key)
    return None if part is None else (0 if part[1] == "A" else 1)


def lora_modules(state: Mapping[str, Tensor]) -> dict[str, tuple[str, str]]:
    """module -> (A key, B key) for every module with both factors in ``state``, in key order."""
    a: dict[str, str] = {}
    b: dict[str, str] = {}
    for k in state:
        if (part := lora_part(k)) is not None:
            (a if part[1] == "A" else b)[part[0]] = k
    return {m: (a[m], b[m]) for m in a if m in b}


def truncate(state: Mapping[str, Tensor], rank: int) -> State:
    """A copy of ``state`` with every LoRA component from ``rank`` on set to zero."""
    out: State = {}
    for k, v in state.items():
        t = v.detach().clone()
        if (ax := rank_axis(k)) is not None:
            t.narrow(ax, rank, t.shape[ax] - rank).zero_()
        out[k] = t
    return out


def take(state: Mapping[str, Tensor], rank: int) -> State:
    """The first ``rank`` components of every LoRA factor (other keys whole): what a rank-r_i client sends."""
    return {k: (v if (ax := rank_axis(k)) is None else v.narrow(ax, 0, rank)).detach().clone() for k, v in state.items()}


def splice(local: Mapping[str, Tensor], base: Mapping[str, Tensor], rank: int) -> State:
    """``local``'s first ``rank`` components with ``base``'s beyond them: local − base is exactly zero there."""
    out: State = {}
    for k, v in local.items():
        t = v.detach().clone()
        if (ax := rank_axis(k)) is not None:
            n = t.shape[ax] - rank
            t.narrow(ax, rank, n).copy_(base[k].narrow(ax, rank, n))
        out[k] = t
    return out


def pad(state: Mapping[str, Tensor], like: Mapping[str, Tensor], rank: int) -> State:
    """``state``'s first ``rank`` components of each LoRA factor, zero-padded to ``like``'s shape (the
    server's rank). A tensor that does not hold them (other dimensions, fewer components) is left as
    it came, for validation to reject."""
    out: State = {}
    for k, v in state.items():
        ax = rank_axis(k)
        ref = like.get(k)
        if ax is None or ref is None or v.dim() != ref.dim() or v.shape[ax] < rank or any(
                v.shape[d] != ref.shape[d] for d in range(v.dim()) if d != ax):
            out[k] = v
            continue
        t = torch.zeros(ref.shape, dtype=v.dtype, device=v.device)
        t.narrow(ax, 0, rank).copy_(v.narrow(ax, 0, rank))
        out[k] = t
    return out


# ------------------------------------------------------------------------------ the rank plan


def assign_ranks(spec: RankSpec, client_ids: Sequence[str], rank: int) -> dict[str, int]:
    """Each client's rank: a list is assigned cyclically in client order (client k gets
    ``spec[k % len(spec)]``); a mapping names clients' ranks, the others train ``rank`` (lora.r);
    None: every client ``rank``. ValueError names a mapped client the federation lacks."""
    if spec is None:
        return {c: rank for c in client_ids}
    if isinstance(spec, list):
        return {c: int(spec[i % len(spec)]) for i, c in enumerate(client_ids)}
    unknown = sorted(set(spec) - set(client_ids))
    if unknown:
        raise ValueError(f"lora.client_ranks names clients the federation lacks: {unknown[:3]} (e.g. "
                         f"{list(client_ids)[:3]})")
    return {c: int(spec.get(c, rank)) for c in client_ids}


@dataclass(frozen=True)
class RankPlan:
    """Who trains which rank, and how the server combines them."""

    mode: Mode
    rank: int  # r: the server adapter's rank (lora.r)
    alpha: float  # LoRA's α (lora.alpha)
    ranks: dict[str, int] = field(default_factory=dict)  # client id -> r_i

    def of(self, client_id: str) -> int:
        return self.ranks.get(client_id, self.rank)

    def scale(self, client_id: str) -> float | None:
        """The LoRA scaling client ``client_id`` trains with: FLoRA's α/r_i (a rank-r_i peft LoRA's);
        None under pad (the server adapter's α/r, as the model has it)."""
        return self.alpha / self.of(client_id) if self.mode == "flora" else None

    def client_spec(self, client_id: str) -> dict[str, Any]:
        """What the instruction tells a client: its rank and its scaling."""
        return {"rank": self.of(client_id), "scale": self.scale(client_id)}

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "rank": self.rank, "client_ranks": dict(self.ranks)}


def method_problem(mode: Mode, params: FLParams) -> str | None:
    """Why heterogeneous ranks (``mode``) cannot run with the algorithm ``params`` set, or None."""
    preset = ALGORITHMS.lookup(params.algorithm)
    where = f"lora.hetero={mode}"
    method = getattr(preset, "method", "plain")
    if getattr(preset, "single_client", False):
        return f"{where} has no use in the Local baseline (one client)"
    if method not in METHODS:
        return (f"{where} works with clients that train the adapter as sent (fedavg, fedprox and the server-optimizer "
                f"variants); fl.algorithm={params.algorithm} keeps or sends rank-r client state ({method})")
    if mode == "flora":
        if (params.aggregator or {}).get("name", "mean") != "mean":
            return f"{where} stacks every client's factors, which is the weighted mean of the products; drop fl.aggregator"
        if (optimizer := params.server_optimizer or preset.optimizer) != "sgd":
            return (f"{where} merges η_s·Σ p_i·B_i·A_i into the base, an SGD server step; the server optimizer here is "
                    f"{optimizer} (fl.algorithm={params.algorithm}, fl.server_optimizer): use fedavg or fedprox")
        if params.dp is not None:
            return f"{where} with fl.dp is not supported: the stacked factors are not a noised mean"
    return None


def config_problem(mode: Mode, params: FLParams, *, peft_method: str, ffa: bool, finetune_steps: int) -> str | None:
    """Why a run's settings cannot train heterogeneous ranks (``mode``), or None (``config.py`` asks)."""
    if peft_method != "lora":
        return f"lora.hetero={mode} needs peft.method=lora (rank components of A and B); got {peft_method}"
    if (why := method_problem(mode, params)) is not None:
        return why
    if mode == "flora" and ffa:
        return "lora.hetero=flora stacks each client's trained A; lora.freeze_a (FFA-LoRA) freezes it: set lora.freeze_a=false"
    if mode == "flora" and finetune_steps:
        return ("lora.hetero=flora with personal.finetune_steps is not supported: fine-tuning would start from the base "
                "without the merged ΔW")
    return None


# ------------------------------------------------------------------------------ client half


class RankHooks(ClientHooks):
    """A rank-r_i client: the method's hooks on the first r_i components of the adapter it received.
    The components beyond start at zero and stay so (their gradients are exactly zero while both
    factors are; they are masked all the same), the result keeps the received adapter there (so the
    update is exactly zero) and only the r_i components leave the client."""

    def __init__(self, inner: ClientHooks, rank: int, global_state: State) -> None:
        self.inner = inner
        self.rank = rank
        self.global_state = global_state
        self.axes = {k: ax for k in global_state if (ax := rank_axis(k)) is not None}

    def _beyond(self, t: Tensor, key: str) -> Tensor:
        ax = self.axes[key]
        return t.narrow(ax, self.rank, t.shape[ax] - self.rank)

    def loss_term(self, params: Mapping[str, Tensor]) -> Tensor | None:
        return self.inner.loss_term(params)

    def before_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        self.inner.before_step(params, lr)
        for k in self.axes.keys() & params.keys():
            if params[k].grad is not None:
                self._beyond(params[k].grad, k).zero_()

    def after_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        self.inner.after_step(params, lr)
        for k in self.axes.keys() & params.keys():
            self._beyond(params[k], k).zero_()

    def start(self, global_state: State) -> State:
        return truncate(self.inner.start(global_state), self.rank)

    def personal_phase(self) -> Any:
        return self.inner.personal_phase()

    def personal_done(self, personal: State) -> None:
        self.inner.personal_done(personal)

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        return self.inner.finish(local, num_steps, lr)

    def result(self, local: State) -> State:
        return splice(self.inner.result(local), self.global_state, self.rank)

    def outgoing(self, delta: State) -> State:
        return take(delta, self.rank)


def rank_hooks(spec: Mapping[str, Any], global_state: State, build: Any) -> ClientHooks:
    """A rank-r_i client's hooks: ``build(view)`` makes the method's hooks from the client's view of
    the global adapter (its first r_i components), wrapped in ``RankHooks``."""
    rank = int(spec["rank"])
    return RankHooks(build(truncate(global_state, rank)), rank, global_state)


# ------------------------------------------------------------------------------ FLoRA: stacking and the merged ΔW


def stack(As: Sequence[Tensor], Bs: Sequence[Tensor], coefs: Sequence[float]) -> tuple[Tensor, Tensor]:
    """FLoRA's stacking: (A, B) = (concat_i(c_i·A_i) on rows, concat_i(B_i) on columns), so that
    B·A = Σ c_i·B_i·A_i exactly and the stacked rank is Σ r_i."""
    if not (len(As) == len(Bs) == len(coefs)) or not As:
        raise ValueError(f"need one A, one B and one coefficient per client; got {len(As)}, {len(Bs)}, {len(coefs)}")
    for a, b in zip(As, Bs):
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"A has rank {a.shape[0]} but B has {b.shape[1]}")
    return torch.cat([a * float(c) for a, c in zip(As, coefs)], dim=0), torch.cat(list(Bs), dim=1)


def add_product(merged: Mapping[str, Tensor], module: str, A: Tensor, B: Tensor) -> State:
    """``merged`` with B·A added to ``module``'s ΔW: kept as stacked factors while
    rank·(out + in) < out·in, else dense (a new dict; the others' tensors are shared)."""
    out = dict(merged)
    kw, ka, kb = module + DENSE, module + FACTOR_A, module + FACTOR_B
    if kw in out:
        out[kw] = out[kw] + B @ A
        return out
    if ka in out:
        A, B = torch.cat([out.pop(ka), A], dim=0), torch.cat([out.pop(kb), B], dim=1)
    rows, cols = B.shape[0], A.shape[1]
    if A.shape[0] * (rows + cols) < rows * cols:
        out[ka], out[kb] = A, B
    else:
        out[kw] = B @ A
    return out


def merged_modules(merged: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """module -> its stored parts ({"A": …, "B": …} or {"W": …})."""
    out: dict[str, dict[str, Tensor]] = {}
    for k, v in merged.items():
        for suffix in (FACTOR_A, FACTOR_B, DENSE):
            if k.endswith(suffix):
                out.setdefault(k[:-len(suffix)], {})[suffix[-1]] = v
                break
        else:
            raise KeyError(f"{k!r} is not a part of a merged ΔW")
    return out


def materialize(merged: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """module -> ΔW (B·A of its stacked factors, or its dense matrix): one computation, the same
    wherever it runs, so the server's evaluation and the clients see the same base."""
    return {m: (p["W"] if "W" in p else p["B"] @ p["A"]) for m, p in merged_modules(merged).items()}


def factor_rank(parts: Mapping[str, Tensor]) -> int:
    """The rank of exact factors of one module's ΔW: its stacked rank, or min(out, in) when dense."""
    return int(parts["A"].shape[0]) if "A" in parts else int(min(parts["W"].shape))


class FloraMerge(Component):
    """FLoRA's server half: stacks the round's client factors and adds their product to the merged ΔW
    (checkpointed as ``merged/<module>.delta_*``)."""

    name = "flora"
    states = ("merged",)
    merged: State | None

    def __init__(self, plan: RankPlan, server_lr: float = 1.0) -> None:
        super().__init__()
        self.plan = plan
        self.server_lr = server_lr
        self.last_rank = 0

    def absorb(self, global_state: State, updates: Sequence[ClientUpdate], weights: Sequence[float]) -> None:
        """ΔW += η·Σ_i p_i·s_i·B_i·A_i with (A_i, B_i) = the global adapter + Δ_i on client i's r_i components."""
        merged: State = dict(self.merged or {})
        ranks = [self.plan.of(u.client_id) for u in updates]
        coefs = [self.server_lr * p * self.plan.alpha / r for p, r in zip(weights, ranks)]  # η·p_i·s_i, s_i = α/r_i
        for module, (ka, kb) in lora_modules(global_state).items():
            As = [(global_state[ka] + u.delta[ka])[:r] for u, r in zip(updates, ranks)]
            Bs = [(global_state[kb] + u.delta[kb])[:, :r] for u, r in zip(updates, ranks)]
            A, B = stack(As, Bs, coefs)
            merged = add_product(merged, module, A, B)
        self.merged = merged
        self.last_rank = sum(ranks)

    def payload(self) -> dict[str, State]:
        """What the next round's instructions carry: the merged ΔW (nothing before the first merge)."""
        return {MERGED: self.merged} if self.merged else {}

    def report(self) -> dict[str, Any]:
        parts = merged_modules(self.merged or {})
        return {"stacked_rank": self.last_rank,
                "merged_rank": max((factor_rank(p) for p in parts.values()), default=0)}
