"""pFedMe (Dinh et al. 2020) at adapter level: personalisation through Moreau envelopes.

The client keeps a local copy w_i of the global adapter (w at the round's start) and trains the
personalised θ on f_i(θ) + λ/2·‖θ − w_i‖²; after every K optimizer steps on θ (the inner solve of
θ̂(w_i)) it moves w_i ← w_i − η·λ·(w_i − θ), and once more after a last incomplete inner solve. The
update is w_i − w, and θ (the personalised adapter) stays on the client. The server step is
w ← w + β·Σ p_i (w_i − w), i.e. FedAvg's with η_s = β (``fl.server_lr``; the paper's β ≥ 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedllm.fl import state as S
from fedllm.fl.base import ClientHooks, ClientMethod
from fedllm.fl.registries import CLIENT_METHODS
from fedllm.fl.state import State


class PFedMeHooks(ClientHooks):
    """θ is the trained adapter; w_i lives here, on the parameters' device and dtype."""

    def __init__(self, global_state: State, lam: float, inner_steps: int, eta: float) -> None:
        self.w_i = S.clone(global_state)
        self.lam, self.inner, self.eta = lam, inner_steps, eta
        self._on: State | None = None  # w_i beside the live parameters
        self.steps = 0

    def _w(self, params: Mapping[str, Tensor]) -> State:
        if self._on is None:
            self._on = {k: v.clone() for k, v in S.match(self.w_i, params).items()}
        return self._on

    def loss_term(self, params: Mapping[str, Tensor]) -> Tensor | None:
        """λ/2·Σ‖θ − w_i‖² (gradient λ(θ − w_i))."""
        w = self._w(params)
        live = [k for k, p in params.items() if p.requires_grad]
        if not live:
            return None
        return self.lam / 2 * sum((params[k] - w[k]).square().sum() for k in live)

    def _outer(self, theta: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for k, w in self._w(theta).items():
                w.sub_(self.eta * self.lam * (w - theta[k].to(w.dtype)))

    def after_step(self, params: Mapping[str, Tensor], lr: float) -> None:
        self.steps += 1
        if self.steps % self.inner == 0:
            self._outer(params)

    def finish(self, local: State, num_steps: int, lr: float) -> tuple[dict[str, State], State | None]:
        """A last outer update after an incomplete inner solve; θ (the local result) is kept."""
        if self.steps % self.inner and self._on is not None:
            self._outer(S.match(local, self._on))
        return {}, S.clone(local)

    def result(self, local: State) -> State:
        """w_i, not θ: the server averages the clients' local copies of w."""
        if self._on is None:  # no step was taken: w_i is still w
            return S.clone(self.w_i)
        return {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in self._on.items()}


@CLIENT_METHODS.register("pfedme")
class PFedMe(ClientMethod):
    """λ, K and η travel in the instruction; β is the SGD server optimizer's η_s."""

    reads = ("pfedme_lambda", "pfedme_inner_steps", "pfedme_lr", "server_lr")
    stateful_clients = True
    personalised = True

    def client_options(self) -> dict[str, Any]:
        p = self.params
        return {"lam": p.pfedme_lambda, "inner_steps": p.pfedme_inner_steps, "eta": p.pfedme_lr}

    @classmethod
    def hooks(cls, options: Mapping[str, Any], global_state: State, payload: Mapping[str, State],
              client_state: State | None) -> ClientHooks:
        return PFedMeHooks(global_state, float(options["lam"]), int(options["inner_steps"]), float(options["eta"]))
