"""SCAFFOLD (Karimireddy et al. 2020, option II): control variates c, c_i correct client drift.

Client: every step uses the correction c − c_i; paper mode adds it to the gradient before the
optimizer step, openfedllm mode (OpenFedLLM's callback) subtracts lr·(c − c_i) from θ after the
AdamW step. Then c_i⁺ = c_i − c + (w − w_i)/(K·η_l) and Δc_i = c_i⁺ − c_i go to the server.
Server: w ← w + η_s·Σ p_i Δ_i (FedAvg; samples-weighted in openfedllm mode) and c ← c + Σ_S Δc_i / N,
with N the total number of clients.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.base import ClientHooks, ClientUpdate, register_algorithm
from fedllm.fl.fedavg import FedAvg
from fedllm.fl.state import State

CONTROL_DELTA = "control_delta"


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


@register_algorithm("scaffold")
class Scaffold(FedAvg):
    """FedAvg server plus the server control variate c (zeros at first, shape of the adapter)."""

    stateful_clients = True
    server_states = ("c",)
    c: State | None

    def client_hooks(self, global_state: State, client_state: State | None) -> ClientHooks:
        if self.c is None:
            self.c = S.zeros_like(global_state)
        c_i = S.zeros_like(global_state) if client_state is None else S.match(client_state, global_state)
        compat = self.params.compat == "openfedllm"
        return ScaffoldHooks(global_state, S.match(self.c, global_state), c_i, after_step=compat)

    def server_update(self, global_state: State, delta: State, updates: list[ClientUpdate]) -> State:
        """FedAvg step, then c ← c + Σ_S Δc_i / N."""
        missing = [u.client_id for u in updates if CONTROL_DELTA not in u.extras]
        if missing:
            raise ValueError(f"scaffold updates lack extras[{CONTROL_DELTA!r}] (clients {missing[:3]})")
        c = self.c if self.c is not None else S.zeros_like(global_state)
        dc = S.weighted_sum([u.extras[CONTROL_DELTA] for u in updates], [1 / self.num_clients] * len(updates))
        self.c = S.add(c, S.match(dc, c))
        return super().server_update(global_state, delta, updates)
