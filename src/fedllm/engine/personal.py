"""Personal evaluation: every client's own adapter on its own held-out split, beside the global
adapter's number for the same client.

A client's adapter is its personalised one where the method keeps one (Ditto's v_i, pFedMe's θ_i,
FedSA-LoRA's shared A with its own B), else the global adapter; with ``personal.finetune_steps``
(FedAvg+FT) it is then fine-tuned on the client's training data and kept in the client store
(kind ``finetuned``), so personal adapters live on disk, never all in memory. Where the clients
are (this process, or Flower nodes) the same :func:`own_adapter` picks the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedllm.data.schema import ClientData
from fedllm.engine.client import ClientRuntime, finetune_client
from fedllm.engine.store import ClientStateStore
from fedllm.fairness import compare, spread
from fedllm.fl import CLIENT_METHODS
from fedllm.fl.state import State

FINETUNED = "finetuned"


@dataclass(frozen=True)
class PersonalSpec:
    """What a client needs to build its personal adapter: the client method (name and options) and
    FedAvg+FT's fine-tuning (steps, learning rate, local-training settings, run seed). Plain data, so
    it travels to Flower nodes as it is."""

    method: dict[str, Any]
    finetune_steps: int = 0
    lr: float = 0.0
    train: dict[str, Any] | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "finetune_steps": self.finetune_steps, "lr": self.lr, "train": self.train,
                "seed": self.seed}


def method_adapter(method: str, global_state: State, store: ClientStateStore | None, client_id: str) -> State | None:
    """The client method's personal adapter for a client, from the global one and the client's stored
    state (Ditto's v_i, pFedMe's θ_i, FedSA's own B); None for methods that keep none."""
    state = store.get(client_id) if store is not None else None
    return CLIENT_METHODS.lookup(method).personal_adapter(global_state, state)


def own_adapter(spec: PersonalSpec, global_state: State, data: ClientData, rt: ClientRuntime,
                store: ClientStateStore | None) -> tuple[State, str]:
    """(the adapter this client uses, its kind: personal | global, + "+ft" when fine-tuned)."""
    own = method_adapter(spec.method["name"], global_state, store, data.id)
    adapter, kind = (own, "personal") if own is not None else (global_state, "global")
    if spec.finetune_steps:
        tuned = finetune_client(adapter, data, rt, spec.train or {}, spec.finetune_steps, spec.lr, spec.seed)
        if tuned is not None:
            adapter, kind = tuned, f"{kind}+ft"
            if store is not None:
                store.put(data.id, tuned, FINETUNED)
    return adapter, kind


@dataclass
class LocalPersonal:
    """Personal evaluation where this process holds the clients (the simulation)."""

    spec: PersonalSpec
    runtime: ClientRuntime
    evaluate_client: Callable[[Any, str], dict[str, float] | None]  # the evaluator's one-client numbers
    client_data: Callable[[str], ClientData]
    clients: list[str]

    def __call__(self, global_state: State, round_done: int) -> dict[str, dict[str, Any]]:
        """Per client with held-out data: its own adapter's numbers and the adapter's kind."""
        rt = self.runtime
        out: dict[str, dict[str, Any]] = {}
        for cid in self.clients:
            adapter, kind = own_adapter(self.spec, global_state, self.client_data(cid), rt, rt.store)
            rt.slot.load(adapter)
            row = self.evaluate_client(rt.slot.model, cid)
            if row is not None:
                out[cid] = {**row, "adapter": kind}
        rt.slot.load(global_state)
        return out


def summarise(personal: Mapping[str, Mapping[str, Any]], global_per_client: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``personal`` event: per client its global and personal loss (and the adapter's kind), the
    spread of both over the clients, and how many clients gain."""
    per_client = {c: {"global": global_per_client[c]["loss"], "personal": r["loss"], "adapter": r["adapter"],
                      **{f"personal_{k}": v for k, v in r.items() if k not in ("loss", "tokens", "adapter")}}
                  for c, r in personal.items() if c in global_per_client}
    glob = {c: r["global"] for c, r in per_client.items()}
    mine = {c: r["personal"] for c, r in per_client.items()}
    return {"global": spread(glob.values()), "personal": spread(mine.values()), **compare(mine, glob),
            "per_client": per_client}
