"""DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models"),
central user-level DP: each client update is clipped to L2 norm C, the server adds N(0, (z·C)²) to
the sum of the clipped updates and divides by the expected number of clients S (a fixed
denominator, so one user changes the average by at most C/S). ε at δ after every round comes from
dp-accounting's RDP or PLD accountant with sampling rate q = S/N (``fl.sampling``: uniform is a
fixed-size sample without replacement, accounted under replace-one; poisson is Poisson sampling,
accounted under add/remove-one). With ``epsilon`` set, z is solved before training so that the
planned rounds end at that ε.

Adaptive clipping (Andrew et al. 2021): C follows the γ-quantile of the update norms,
C ← C·exp(−η_C·(b̄ − γ)), where b̄ is the noised share of unclipped updates (the count centred so one
client moves it by ½); the count's noise σ_b takes its part of the budget, leaving
z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) for the updates, and ε is accounted with z.
"""

from __future__ import annotations

from typing import Any

import torch

from fedllm.fl import noise
from fedllm.fl import state as S
from fedllm.fl.base import ClientUpdate, Federation, Transform
from fedllm.fl.params import DPConfig
from fedllm.fl.privacy import (
    GUARANTEES,
    DpFedAvgAccounting,
    adaptive_clip_noise_multipliers,
    calibrate_noise_multiplier,
    next_clip_norm,
    noisy_unclipped_fraction,
)
from fedllm.fl.registries import TRANSFORMS
from fedllm.fl.state import State
from fedllm.fl.transforms.clip import clip_to_norm
from fedllm.seeding import derive_seed


@TRANSFORMS.register("dp-fedavg")
class DpFedAvg(Transform):
    """Clip each update on arrival, noise the sum, average over the expected clients, account."""

    Options = DPConfig
    options: DPConfig
    scalars = ("noise_seed", "round", "releases", "clip_norm")

    def bind(self, federation: Federation) -> None:
        dp = self.options
        federation.require("clients_per_round", "rounds", by="fl.dp dp-fedavg")
        n, s, t = federation.num_clients, min(federation.clients_per_round, federation.num_clients), federation.rounds
        if dp.noise_multiplier is not None:
            z = dp.noise_multiplier
        else:
            try:
                z = calibrate_noise_multiplier(dp.epsilon, dp.delta, t, federation.sampling, n, s, dp.accountant)
            except ValueError as e:
                raise ValueError(f"fl.dp.epsilon={dp.epsilon}: {e}") from None
        self.accounting = DpFedAvgAccounting(z, federation.sampling, n, s, dp.delta, dp.accountant)
        self.accounting.epsilon(1)  # an accountant that cannot handle this sampling says so now, not mid-run
        self.expected_clients = s
        self.count_stddev = (dp.clipped_count_stddev or s / 20) if dp.adaptive_clip else None
        try:
            self.update_multiplier = (adaptive_clip_noise_multipliers(z, self.count_stddev, s) if dp.adaptive_clip else z)
        except ValueError as e:
            raise ValueError(f"fl.dp.clipped_count_stddev (adaptive clipping): {e}") from None
        self.sampling = federation.sampling
        self.noise_seed = noise.noise_seed(dp.secure_noise, federation.seed, "dp-fedavg")
        self.round = self.releases = 0
        self.clip_norm = dp.clip
        self._unclipped = 0

    @property
    def noise_multiplier(self) -> float:
        return self.accounting.noise_multiplier

    def begin_round(self) -> None:
        self.round += 1
        self._unclipped = 0

    def on_update(self, update: ClientUpdate, global_state: State) -> ClientUpdate:
        if S.norm(update.delta) <= self.clip_norm:
            self._unclipped += 1
        update.delta = clip_to_norm(update.delta, self.clip_norm)
        return update

    def on_aggregate(self, delta: State, updates: list[ClientUpdate]) -> State:
        """(Σ clip(Δ_i) + N(0, (z_Δ·C)²)) / S, whatever the aggregator computed (it is a mean here)."""
        total = S.weighted_sum([u.delta for u in updates], [1.0] * len(updates))
        seed = derive_seed(self.noise_seed, "sum", self.round)
        noised = noise.add_noise(total, self.update_multiplier * self.clip_norm, seed)
        out = S.scale(noised, 1.0 / self.expected_clients)
        if self.count_stddev is not None:
            gen = torch.Generator().manual_seed(derive_seed(self.noise_seed, "count", self.round))
            xi = float(torch.randn((), generator=gen, dtype=torch.float64)) * self.count_stddev
            b = noisy_unclipped_fraction(self._unclipped, len(updates), xi, self.expected_clients)
            self.clip_norm = next_clip_norm(self.clip_norm, b, self.options.target_quantile, self.options.clip_lr)
        self.releases += 1
        return out

    def report(self) -> dict[str, Any]:
        dp = self.options
        return {"mode": "dp-fedavg", "epsilon": self.accounting.epsilon(self.releases), "delta": dp.delta,
                "noise_multiplier": self.noise_multiplier, "clip": self.clip_norm, "rounds_accounted": self.releases,
                "sampling": self.sampling, "accountant": dp.accountant,
                "guarantee": GUARANTEES[f"dp-fedavg-{self.sampling}"]}
