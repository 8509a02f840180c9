"""Ditto (Li et al. 2021): each client keeps a personal adapter v_i next to the global w.

A round: the client trains w as FedAvg's clients do and sends Δ_i; then it trains its own v_i (from
the last round's v_i, or w at its first round) on the same objective plus λ/2·‖v − w‖², the pull
toward the global adapter it received, and keeps v_i in its store. λ = 0 gives purely local models
that never see the federation; a large λ gives back the global one. The server is FedAvg's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedllm.fl import state as S
from fedllm.fl.base import ClientHooks, ClientMethod, Phase
from fedllm.fl.methods.fedprox import FedProxHooks
from fedllm.fl.registries import CLIENT_METHODS
from fedllm.fl.state import State


class DittoHooks(ClientHooks):
    """No change to the global training; a personal phase with the proximal pull toward w."""

    def __init__(self, global_state: State, personal: State | None, lam: float, steps: int | None) -> None:
        self.w = global_state
        self.v = S.clone(personal if personal is not None else global_state)
        self.lam, self.steps = lam, steps

    def personal_phase(self) -> Phase:
        """v ← v − η(∇f_i(v) + λ(v − w)) for ``steps`` steps (through the local optimizer)."""
        return Phase(start=self.v, hooks=FedProxHooks(self.w, self.lam), steps=self.steps)

    def personal_done(self, personal: State) -> None:
        self.v = personal

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        return {}, self.v


@CLIENT_METHODS.register("ditto")
class Ditto(ClientMethod):
    """λ = params.ditto_lambda and the personal steps travel in the instruction."""

    reads = ("ditto_lambda", "personal_steps")
    stateful_clients = True
    personalised = True

    def client_options(self) -> dict[str, Any]:
        return {"lam": self.params.ditto_lambda, "steps": self.params.personal_steps}

    @classmethod
    def hooks(cls, options: Mapping[str, Any], global_state: State, payload: Mapping[str, State],
              client_state: State | None) -> ClientHooks:
        return DittoHooks(global_state, client_state, float(options["lam"]), options.get("steps"))
