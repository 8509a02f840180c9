"""Local differential privacy: each client clips its update to C and adds N(0, (z·C)²) itself, so
nothing un-noised leaves it and the server need not be trusted. The server sees every release (no
sampling amplification); a client's ε after k participations composes k Gaussian mechanisms of
multiplier z/2 (its two possible updates differ by up to 2C). Runs report the largest ε of any
client so far; with ``epsilon`` set, z is solved so that a client sampled in every planned round
ends at that ε.

With ``secure_noise`` a client draws its noise from the OS's entropy, unknown to the server; a
resumed run then differs from an uninterrupted one (reproducible noise needs a seed someone knows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedllm.fl import noise
from fedllm.fl.base import ClientContext, ClientUpdate, Federation, Transform
from fedllm.fl.params import DPConfig
from fedllm.fl.privacy import GUARANTEES, largest_certifiable, local_dp_epsilon
from fedllm.fl.registries import TRANSFORMS
from fedllm.fl.state import State
from fedllm.fl.transforms.clip import clip_to_norm
from fedllm.seeding import derive_seed


def calibrate_local(target: float, delta: float, releases: int, accountant: str) -> float:
    """The smallest z (to 0.1%) whose ε after ``releases`` releases is at most ``target``."""
    lo, hi = 1e-3, 1e5
    hi, floor = largest_certifiable(lambda z: local_dp_epsilon(z, releases, delta, accountant), lo, hi)
    if floor > target:
        raise ValueError(f"target ε = {target:g} is unreachable: the smallest ε the {accountant} accountant certifies "
                         f"over {releases} releases at δ = {delta:g} is {floor:.4g} (at z = {hi:g})")
    while hi / lo > 1.001:
        mid = (lo * hi) ** 0.5
        if local_dp_epsilon(mid, releases, delta, accountant) <= target:
            hi = mid
        else:
            lo = mid
    return hi


@TRANSFORMS.register("dp-local")
class LocalDP(Transform):
    Options = DPConfig
    options: DPConfig
    scalars = ("noise_seed", "participations")

    def bind(self, federation: Federation) -> None:
        dp = self.options
        if dp.noise_multiplier is not None:
            self.noise_multiplier = dp.noise_multiplier
        else:
            federation.require("rounds", by="fl.dp local")
            try:
                self.noise_multiplier = calibrate_local(dp.epsilon, dp.delta, federation.rounds, dp.accountant)
            except ValueError as e:
                raise ValueError(f"fl.dp.epsilon={dp.epsilon}: {e}") from None
        self.noise_seed = None if dp.secure_noise else noise.noise_seed(False, federation.seed, "local")
        self.participations: dict[str, int] = {}

    @property
    def on_client_side(self) -> bool:
        return True

    def client_spec(self) -> dict[str, Any]:
        return {"name": self.name, "clip": self.options.clip, "noise_multiplier": self.noise_multiplier,
                "noise_seed": self.noise_seed}

    @classmethod
    def on_client(cls, options: Mapping[str, Any], delta: State, ctx: ClientContext) -> State:
        clip = float(options["clip"])
        seed = None if options["noise_seed"] is None else derive_seed(options["noise_seed"], ctx.round, ctx.client_id)
        return noise.add_noise(clip_to_norm(delta, clip), float(options["noise_multiplier"]) * clip, seed)

    def on_update(self, update: ClientUpdate, global_state: State) -> ClientUpdate:
        self.participations[update.client_id] = self.participations.get(update.client_id, 0) + 1
        return update

    def report(self) -> dict[str, Any]:
        dp = self.options
        most = max(self.participations.values(), default=0)
        return {"mode": "local", "epsilon": local_dp_epsilon(self.noise_multiplier, most, dp.delta, dp.accountant),
                "delta": dp.delta, "noise_multiplier": self.noise_multiplier, "clip": dp.clip,
                "max_participations": most, "guarantee": GUARANTEES["local"]}
