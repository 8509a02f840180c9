"""FedLLM-Bench's differential privacy (Ye et al. 2024, Appendix D.3; its fed_global.py): the server
adds Gaussian noise N(0, σ²) to each sampled client's uploaded adapter before averaging, with
σ = Δ_l·√(2qT·ln(1/δ))/ε, Δ_l = 2·lr·C/(|D|/N), q = S/N, or a fixed σ (the paper's Table 8).

The formula does not clip anything, so the (ε, δ) it is computed from is nominal: it holds only if one
client's upload moves by at most Δ_l when one of its samples changes. Runs report it as
``nominal_epsilon`` with ``epsilon: null`` and say so; dp-fedavg is the mode with a guarantee.
"""

from __future__ import annotations

from typing import Any

from fedllm.fl import noise
from fedllm.fl.base import ClientUpdate, Federation, Transform
from fedllm.fl.params import DPConfig
from fedllm.fl.privacy import GUARANTEES, fedllm_bench_sigma
from fedllm.fl.registries import TRANSFORMS
from fedllm.fl.state import State
from fedllm.seeding import derive_seed


@TRANSFORMS.register("dp-fedllm-bench")
class FedLLMBenchNoise(Transform):
    """Noise on each update as it arrives (the server is trusted with the raw updates)."""

    Options = DPConfig
    options: DPConfig
    scalars = ("noise_seed", "round")

    def bind(self, federation: Federation) -> None:
        dp = self.options
        if dp.sigma is not None:
            self.sigma = dp.sigma
        else:
            federation.require("total_samples", "clients_per_round", "rounds", "lr", by="fl.dp fedllm-bench")
            self.sigma = fedllm_bench_sigma(dp.epsilon, dp.delta, federation.lr, dp.clip, federation.total_samples,
                                            federation.num_clients, federation.clients_per_round, federation.rounds)
        self.noise_seed = noise.noise_seed(dp.secure_noise, federation.seed, "fedllm-bench")
        self.round = 0

    def begin_round(self) -> None:
        self.round += 1

    def on_update(self, update: ClientUpdate, global_state: State) -> ClientUpdate:
        seed = derive_seed(self.noise_seed, self.round, update.client_id)
        update.delta = noise.add_noise(update.delta, self.sigma, seed)
        return update

    def report(self) -> dict[str, Any]:
        dp = self.options
        return {"mode": "fedllm-bench", "epsilon": None, "nominal_epsilon": dp.epsilon, "delta": dp.delta,
                "sigma": self.sigma, "clip": dp.clip, "guarantee": GUARANTEES["fedllm-bench"]}
