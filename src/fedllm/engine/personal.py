"""Personal evaluation: every client's own adapter on its own held-out split, beside the global
adapter's number for the same client.

A client's adapter is its personalised one where the method keeps one (Ditto's v_i, pFedMe's θ_i,
FedSA-LoRA's shared A with its own B), else the global adapter; with ``personal.finetune_steps``
(FedAvg+FT) it is then fine-tuned on the client's training data and kept in the client store
(kind ``finetuned``), so personal adapters live on disk, never all in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedllm.data.schema import ClientData
from fedllm.engine.client import ClientRuntime, finetune_client
from fedllm.fairness import compare, spread
from fedllm.fl import Algorithm
from fedllm.fl.state import State

FINETUNED = "finetuned"


@dataclass
class PersonalEvaluation:
    algorithm: Algorithm
    runtime: ClientRuntime
    evaluate_client: Callable[[Any, str], dict[str, float] | None]  # the evaluator's one-client numbers
    client_data: Callable[[str], ClientData]
    clients: list[str]  # the clients to evaluate (those that can train)
    train: dict[str, Any]  # local-training settings (the fine-tuning uses them)
    finetune_steps: int
    lr: float
    seed: int

    def __call__(self, global_state: State, global_per_client: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One row: per client its global and personal loss (and the personal adapter's kind), and
        the spread of both over the clients."""
        rt, store = self.runtime, self.runtime.store
        per_client: dict[str, dict[str, Any]] = {}
        for cid in self.clients:
            if cid not in global_per_client:
                continue  # no held-out sample
            own = self.algorithm.personal_adapter(global_state, store.get(cid)) if store is not None else None
            kind = "personal" if own is not None else "global"
            adapter = own if own is not None else global_state
            if self.finetune_steps:
                tuned = finetune_client(adapter, self.client_data(cid), rt, self.train, self.finetune_steps, self.lr,
                                        self.seed)
                if tuned is not None:
                    adapter, kind = tuned, f"{kind}+ft"
                    if store is not None:
                        store.put(cid, tuned, FINETUNED)
            rt.slot.load(adapter)
            row = self.evaluate_client(rt.slot.model, cid)
            if row is None:
                continue
            per_client[cid] = {"global": global_per_client[cid]["loss"], "personal": row["loss"], "adapter": kind,
                               **{f"personal_{k}": v for k, v in row.items() if k not in ("loss", "tokens")}}
        rt.slot.load(global_state)
        glob = {c: r["global"] for c, r in per_client.items()}
        mine = {c: r["personal"] for c, r in per_client.items()}
        return {"global": spread(glob.values()), "personal": spread(mine.values()), **compare(mine, glob),
                "per_client": per_client}
