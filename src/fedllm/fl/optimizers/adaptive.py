"""Adaptive server optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization"): the base.

The aggregated delta Δ acts as a pseudo-gradient: m ← β1·m + (1 − β1)·Δ, v ← second_moment(v, x²),
w ← w + η·m/(√v + τ); FedAdagrad, FedAdam and FedYogi override only ``second_moment``.

paper: Δ with the configured weighting, x = Δ, m₀ = 0, optional bias correction m̂ = m/(1 − β1^t),
       v̂ = v/(1 − β2^t) for Adam and Yogi (t counts server updates, this one included).
openfedllm: Δ = uniform mean over the sampled clients, m = Δ in the first round, x = m (the second
       moment is built from m², as in OpenFedLLM's fed_global.py), no bias correction.
v₀ (``v0``): Reddi et al.'s Algorithm 2 takes v₋₁ ≥ τ² as input; Flower's strategies and our paper
       semantics start from 0 by default, OpenFedLLM from τ². ``v0: zero | tau2`` chooses either.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.base import ServerOptimizer
from fedllm.fl.state import State


class AdaptiveOptimizer(ServerOptimizer):
    """m and v per adapter entry; η = server_lr (default 1e-3), τ = params.tau."""

    default_lr = 1e-3
    reads = ("server_lr", "beta1", "beta2", "tau", "bias_correction", "v0")
    states = ("m", "v")
    #: False for Adagrad: β1 is forced to 0, so m = Δ.
    uses_momentum: ClassVar[bool] = True
    #: False for Adagrad: params.bias_correction is ignored.
    bias_correctable: ClassVar[bool] = True
    m: State | None
    v: State | None

    def second_moment(self, v: Tensor, sq: Tensor) -> Tensor:
        """New v from the old v and the squared pseudo-gradient (Δ² or m²)."""
        raise NotImplementedError

    def used_params(self) -> set[str]:
        if self.params.compat == "openfedllm" or not self.bias_correctable:
            return set(self.reads) - {"bias_correction"}
        return set(self.reads)

    def v0(self) -> str:
        """The initial second moment in force: the configured one or the semantics' default."""
        p = self.params
        return p.v0 or ("tau2" if p.compat == "openfedllm" else "zero")

    def step(self, w: State, delta: State, rounds_done: int) -> State:
        """Update m and v, then w + η·m/(√v + τ) (with bias correction if asked, paper mode only)."""
        p, compat = self.params, self.params.compat == "openfedllm"
        if self.m is None or self.v is None:
            self.m = S.zeros_like(w)
            self.v = S.full_like(w, p.tau**2) if self.v0() == "tau2" else S.zeros_like(w)
        b1 = p.beta1 if self.uses_momentum else 0.0
        if compat and rounds_done == 0:
            m = delta
        else:
            m = {k: b1 * self.m[k] + (1 - b1) * delta[k] for k in delta}
        x = m if compat else delta
        self.m, self.v = m, {k: self.second_moment(self.v[k], x[k].square()) for k in x}
        m_hat, v_hat = self.m, self.v
        if p.bias_correction and self.bias_correctable and not compat:
            t = rounds_done + 1
            m_hat = S.scale(m_hat, 1 / (1 - b1**t))
            v_hat = S.scale(v_hat, 1 / (1 - p.beta2**t))
        return {k: w[k] + self.lr * (m_hat[k] / (v_hat[k].sqrt() + p.tau)) for k in w}
