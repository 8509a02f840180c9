"""FedSA-LoRA (Guo et al. 2025, "Selective Aggregation for Low-Rank Adaptation"): LoRA's A matrices
learn what clients share and are aggregated; the B matrices learn what is theirs and never leave.

A round: the client starts from the global A with its own B (the global initial B, zeros, at its
first round), trains both, sends ΔA only and keeps B in its store. The server aggregates and steps
the A matrices alone (FedAvg's step by default). A client's model is the global A with its own B;
the global adapter itself keeps the initial B, so it is the base model's until personalised.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedllm.fl import state as S
from fedllm.fl.base import ClientHooks, ClientMethod
from fedllm.fl.registries import CLIENT_METHODS
from fedllm.fl.state import State, is_lora_a


def shared_part(state: State) -> State:
    return {k: v for k, v in state.items() if is_lora_a(k)}


def local_part(state: State) -> State:
    return {k: v for k, v in state.items() if not is_lora_a(k)}


class FedSAHooks(ClientHooks):
    def __init__(self, own_b: State | None) -> None:
        self.own_b = own_b

    def start(self, global_state: State) -> State:
        """The received A with the client's own B."""
        if self.own_b is None:
            return global_state
        return {**global_state, **S.match(self.own_b, local_part(global_state))}

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        return {}, S.clone(local_part(local))

    def result(self, local: State) -> State:
        return shared_part(local)


@CLIENT_METHODS.register("fedsa")
class FedSA(ClientMethod):
    """Shares (sends, aggregates, steps) the LoRA A keys only."""

    stateful_clients = True
    personalised = True

    def shared(self, global_state: State) -> State:
        return shared_part(global_state)

    def adapter_problem(self, trainable: State) -> str | None:
        if shared_part(trainable):
            return None
        if any(".lora_B." in k or k.endswith("lora_B.weight") for k in trainable):
            return ("shares LoRA's A matrices, which FFA-LoRA freezes (lora.freeze_a, on by default under fl.dp); "
                    "set lora.freeze_a=false")
        return "shares LoRA's A matrices, and this adapter has none (peft.method lora or dora has them)"

    def secure_sum_problem(self) -> str:
        return "sends part of the adapter, which the secure sum of whole adapters does not take"

    @classmethod
    def hooks(cls, options: Mapping[str, object], global_state: State, payload: Mapping[str, State],
              client_state: State | None) -> ClientHooks:
        return FedSAHooks(client_state)

    @classmethod
    def personal_adapter(cls, global_state: State, client_state: State | None) -> State | None:
        if client_state is None:
            return None
        return {**global_state, **S.match(client_state, local_part(global_state))}
