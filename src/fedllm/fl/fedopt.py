"""Adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization"): FedOpt base.

The mean client delta Δ acts as a pseudo-gradient: m ← β1·m + (1 − β1)·Δ, v ← second_moment(v, x²),
w ← w + η·m/(√v + τ); subclasses (FedAdagrad, FedAdam, FedYogi) override only ``second_moment``.

paper: Δ with the configured weighting, x = Δ, m₀ = v₀ = 0 (also for Yogi), optional bias correction
       m̂ = m/(1 − β1^t), v̂ = v/(1 − β2^t) for Adam and Yogi (t counts server updates, this one included).
openfedllm: Δ = uniform mean over the sampled clients, m = Δ in the first round, x = m (the second
       moment is built from m², as in OpenFedLLM's fed_global.py), v₀ = τ², no bias correction.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.base import Algorithm, ClientUpdate
from fedllm.fl.state import State


class FedOpt(Algorithm):
    """Server-side adaptive optimizer on the pseudo-gradient Δ; η = server_lr (default 1e-3), τ = params.tau."""

    default_server_lr = 1e-3
    compat_weighting = "uniform"  # OpenFedLLM: sum(Δ_i) / len(clients_this_round)
    server_states = ("m", "v")
    #: False for Adagrad: β1 is forced to 0, so m = Δ.
    uses_momentum: ClassVar[bool] = True
    #: False for Adagrad: params.bias_correction is ignored.
    bias_correctable: ClassVar[bool] = True
    m: State | None
    v: State | None

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        """New v from the old v and the squared pseudo-gradient (Δ² or m²)."""
        raise NotImplementedError

    def server_update(self, global_state: State, delta: State, updates: list[ClientUpdate]) -> State:
        """Update m and v, then w + η·m/(√v + τ) (with bias correction if asked, paper mode only)."""
        p, compat = self.params, self.params.compat == "openfedllm"
        if self.m is None or self.v is None:
            self.m = S.zeros_like(global_state)
            self.v = S.full_like(global_state, p.tau**2) if compat else S.zeros_like(global_state)
        b1 = p.beta1 if self.uses_momentum else 0.0
        if compat and self.rounds_done == 0:
            m = delta
        else:
            m = {k: b1 * self.m[k] + (1 - b1) * delta[k] for k in delta}
        x = m if compat else delta
        self.m, self.v = m, {k: self.second_moment(self.v[k], x[k].square()) for k in x}
        m_hat, v_hat = self.m, self.v
        if p.bias_correction and self.bias_correctable and not compat:
            t = self.rounds_done + 1
            m_hat = S.scale(m_hat, 1 / (1 - b1**t))
            v_hat = S.scale(v_hat, 1 / (1 - p.beta2**t))
        return {k: global_state[k] + self.server_lr * (m_hat[k] / (v_hat[k].sqrt() + p.tau)) for k in global_state}
