"""SCAFFOLD (Karimireddy et al. 2020, option II): control variates c, c_i correct client drift.

Client: every step uses the correction c − c_i; paper mode adds it to the gradient before the
optimizer step, openfedllm mode (OpenFedLLM's callback) subtracts lr·(c − c_i) from θ after the
AdamW step. Then c_i⁺ = c_i − c + (w − w_i)/(K·η_l) and Δc_i = c_i⁺ − c_i go to the server.
Server: c travels with the global adapter; after the step, c ← c + Σ_S Δc_i / N with N the total
number of clients (the adapter itself moves as FedAvg's does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.base import ClientHooks, ClientMethod, ClientUpdate
from fedllm.fl.registries import CLIENT_METHODS
from fedllm.fl.state import State

CONTROL_DELTA = "control_delta"
CONTROL = "c"


class ScaffoldHooks(ClientHooks):
    """Applies the drift correction c − c_i each step and computes the new client control c_i⁺."""

    def __init__(self, global_state: State, c: State, c_i: State, after_step: bool) -> None:
        self.w = S.clone(global_state)
        self.c_i = S.clone(c_i)
        self.correction = S.sub(c, c_i)  # c − c_i
        self.on_params = after_step  # openfedllm: correct θ after the step instead of the gradient
        self._corr_on: State | None = None  # correction on the params' device/dtype

    def _correction(self, params: Mapping[str, Tensor]) -> State:
        if self._corr_on is None:
            self._corr_on = S.match(self.correction, params)
        return self._corr_on

    def before_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        """Paper: g ← g + (c − c_i) (a parameter without gradient gets the correction alone)."""
        if self.on_params:
            return
        for k, corr in self._correction(params).items():
            p = params[k]
            if p.grad is None:
                p.grad = corr.clone()
            else:
                p.grad.add_(corr)

    def after_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        """OpenFedLLM: θ ← θ − lr·(c − c_i) after the optimizer step."""
        if not self.on_params:
            return
        with torch.no_grad():
            for k, corr in self._correction(params).items():
                params[k].sub_(lr * corr)

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        """c_i⁺ = c_i − c + (w − w_i)/(K·η_l); sends Δc_i = c_i⁺ − c_i, keeps c_i⁺."""
        if num_steps * lr == 0:
            raise ValueError(f"SCAFFOLD needs K·η_l > 0 to update c_i; got K={num_steps}, η_l={lr}")
        w_i = S.match(local, self.w)
        c_new = {k: (self.w[k] - w_i[k]) / (num_steps * lr) - self.correction[k] for k in self.w}
        return {CONTROL_DELTA: S.sub(c_new, self.c_i)}, c_new


@CLIENT_METHODS.register("scaffold")
class Scaffold(ClientMethod):
    """The server control variate c (zeros at first, shape of the adapter) and its update."""

    stateful_clients = True
    reply_payload = (CONTROL_DELTA,)
    states = ("c",)
    c: State | None

    def client_options(self) -> dict[str, Any]:
        return {"after_step": self.params.compat == "openfedllm"}

    def payload(self, global_state: State) -> dict[str, State]:
        if self.c is None:
            self.c = S.zeros_like(global_state)
        return {CONTROL: S.match(self.c, global_state)}

    @classmethod
    def hooks(cls, options: Mapping[str, Any], global_state: State, payload: Mapping[str, State],
              client_state: State | None) -> ClientHooks:
        c_i = S.zeros_like(global_state) if client_state is None else S.match(client_state, global_state)
        return ScaffoldHooks(global_state, payload[CONTROL], c_i, after_step=bool(options["after_step"]))

    def absorb(self, global_state: State, updates: list[ClientUpdate]) -> None:
        """c ← c + Σ_S Δc_i / N."""
        missing = [u.client_id for u in updates if CONTROL_DELTA not in u.extras]
        if missing:
            raise ValueError(f"scaffold updates lack extras[{CONTROL_DELTA!r}] (clients {missing[:3]})")
        c = self.c if self.c is not None else S.zeros_like(global_state)
        dc = S.weighted_sum([u.extras[CONTROL_DELTA] for u in updates], [1 / self.num_clients] * len(updates))
        self.c = S.add(c, S.match(dc, c))
