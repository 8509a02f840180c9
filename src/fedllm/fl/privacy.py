"""User-level differential privacy for federated fine-tuning: noise scales, privacy accounting and
the guarantee each mode gives, as pure math over ``dp_accounting`` (no tensors, no I/O, no state).

Each client is one user, so neighbouring federations differ in one client's whole data and every
(ε, δ) here is user-level. Three modes:

* ``fedllm-bench`` (FedLLM-Bench, Ye et al. 2024, App. D.3): Gaussian noise of std
  σ = Δ_l·√(2·q·T·ln(1/δ))/ε on each sampled client's upload, with Δ_l = 2·η·C/(|D|/N), q = S/N.
  Nothing clips the uploads, so this (ε, δ) is nominal, not a guarantee (see ``GUARANTEES``).
* DP-FedAvg (McMahan et al. 2018): updates clipped to ‖Δ_i‖ ≤ C, the server adds N(0, (z·C)²) to
  the sum of the clipped updates; ``DpFedAvgAccounting`` composes T rounds of the subsampled
  Gaussian mechanism (Poisson sampling with add/remove-one, or fixed-size sampling without
  replacement with replace-one) under an RDP or PLD accountant. Adaptive clipping (Andrew et al.
  2021) splits the noise multiplier between the updates and the private clipped count.
* local DP: every client clips to C and adds N(0, (z·C)²) to its own update; the server sees every
  release, so a client that took part k times has composed k Gaussian mechanisms with multiplier z/2.

Accounting is recomputed from scratch from the event of T rounds on every call, so a resumed run
reports exactly the ε an uninterrupted one would.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from dp_accounting import DpEvent, NeighboringRelation
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

Sampling = Literal["poisson", "uniform"]
AccountantName = Literal["rdp", "pld"]

#: Noise multipliers searched by ``calibrate_noise_multiplier``.
CALIBRATION_BRACKET: tuple[float, float] = (1e-2, 1e4)
#: PLD accounting gets expensive as z falls (~1 s per ε at z = 0.5, ~30 s at 0.1, tens of GiB at 0.01, where
#: ε is in the thousands anyway): ``DpFedAvgAccounting`` refuses PLD below ``PLD_MIN_NOISE_MULTIPLIER`` and
#: PLD calibration searches no lower than ``PLD_CALIBRATION_FLOOR``.
PLD_MIN_NOISE_MULTIPLIER: float = 0.1
PLD_CALIBRATION_FLOOR: float = 0.25

#: What each mode promises, in sentences docs and run output can quote.
GUARANTEES: dict[str, str] = {
    "fedllm-bench": (
        "No formal guarantee. The (ε, δ) is FedLLM-Bench's nominal value for Gaussian noise of std "
        "σ = Δ_l·√(2·q·T·ln(1/δ))/ε added to each sampled client's upload, Δ_l = 2·lr·C/(|D|/N); it "
        "would hold only if one sample of a client changed that client's upload by at most Δ_l in L2 "
        "norm (e.g. a single gradient step on per-sample gradients clipped to C). fedllm's local "
        "training (AdamW over K steps, no per-sample clipping) does not enforce that bound, so the "
        "noise is calibrated to a sensitivity nobody checks."
    ),
    "dp-fedavg-poisson": (
        "User-level (ε, δ)-DP of the sequence of global adapters against anyone who sees them, "
        "including clients and the server's output, under add/remove-one-user neighbouring: each "
        "client joins a round independently with probability q = S/N, its update is clipped to L2 "
        "norm C, and the server adds N(0, (z·C)²) to the sum of clipped updates (normalised by a fixed "
        "denominator). The server itself is trusted: it sees the clipped updates before noise."
    ),
    "dp-fedavg-uniform": (
        "User-level (ε, δ)-DP of the sequence of global adapters under replace-one-user neighbouring "
        "(N is public): each round samples exactly S of the N clients without replacement, updates "
        "are clipped to L2 norm C, and the server adds N(0, (z·C)²) to the sum; replacing one user "
        "moves the sum by up to 2C, so each round is a subsampled Gaussian with multiplier z/2 "
        "(RDP accounting only). The server itself is trusted: it sees the clipped updates before noise."
    ),
    "local": (
        "User-level (ε, δ)-DP of everything a client uploads, against the server and any observer, "
        "under replace-one-user neighbouring: the client clips its update to L2 norm C and adds "
        "N(0, (z·C)²) itself, so nobody needs to be trusted; each upload is a Gaussian mechanism with "
        "multiplier z/2 (two possible updates differ by up to 2C) and ε composes over the k rounds the "
        "client took part in, with no amplification from sampling."
    ),
}


def _dp() -> ModuleType:
    """``dp_accounting``, imported on first use: with SciPy it takes about a second, which every
    process importing fedllm's config (each ``fedllm`` command, each Flower ClientApp) would pay
    otherwise, private run or not."""
    import dp_accounting
    import dp_accounting.pld
    import dp_accounting.rdp

    return dp_accounting


# ------------------------------------------------------------------------------ validation


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _count(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _sampling(num_clients: int, clients_per_round: int) -> None:
    _count("num_clients", num_clients)
    _count("clients_per_round", clients_per_round)
    if clients_per_round > num_clients:
        raise ValueError(f"clients_per_round ({clients_per_round}) must not exceed num_clients ({num_clients})")


# ------------------------------------------------------------------------------ (a) FedLLM-Bench


def fedllm_bench_sigma(epsilon: float, delta: float, lr: float, clip: float, total_samples: int,
                       num_clients: int, clients_per_round: int, rounds: int) -> float:
    """FedLLM-Bench's noise std σ = Δ_l·√(2·q·T·ln(1/δ))/ε, Δ_l = 2·η·C/(|D|/N), q = S/N.

    ``lr`` is η, ``clip`` C, ``total_samples`` |D|, ``num_clients`` N, ``clients_per_round`` S,
    ``rounds`` T. The noise goes on each sampled client's upload; its (ε, δ) is nominal (no clipping
    enforces Δ_l), see ``GUARANTEES["fedllm-bench"]``.
    """
    _positive("epsilon", epsilon)
    _delta(delta)
    _positive("lr", lr)
    _positive("clip", clip)
    _count("total_samples", total_samples)
    _sampling(num_clients, clients_per_round)
    _count("rounds", rounds)
    delta_l = 2 * lr * clip / (total_samples / num_clients)
    q = clients_per_round / num_clients
    return delta_l * math.sqrt(2 * q * rounds * math.log(1 / delta)) / epsilon


# ------------------------------------------------------------------------------ (b) DP-FedAvg


def _make_accountant(accountant: AccountantName, relation: NeighboringRelation) -> RdpAccountant | PLDAccountant:
    if accountant == "rdp":
        return _dp().rdp.RdpAccountant(neighboring_relation=relation)
    if accountant == "pld":
        return _dp().pld.PLDAccountant(neighboring_relation=relation)
    raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")


def _round_event(noise_multiplier: float, sampling: Sampling, num_clients: int, clients_per_round: int) -> DpEvent:
    """One DP-FedAvg round: the subsampled Gaussian mechanism on the sum of clipped updates."""
    dpa = _dp()
    if sampling == "poisson":
        # Add/remove one user moves the sum by ≤ C: multiplier z.
        return dpa.PoissonSampledDpEvent(clients_per_round / num_clients, dpa.GaussianDpEvent(noise_multiplier))
    # Replace one user moves the sum by ≤ 2C: multiplier (z·C)/(2C) = z/2.
    return dpa.SampledWithoutReplacementDpEvent(num_clients, clients_per_round,
                                                dpa.GaussianDpEvent(noise_multiplier / 2))


def _relation(sampling: Sampling) -> NeighboringRelation:
    relation = _dp().NeighboringRelation
    return relation.ADD_OR_REMOVE_ONE if sampling == "poisson" else relation.REPLACE_ONE


def _check_mode(sampling: str, accountant: str) -> None:
    if sampling not in ("poisson", "uniform"):
        raise ValueError(f"sampling must be 'poisson' or 'uniform', got {sampling!r}")
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
    if sampling == "uniform" and accountant == "pld":
        raise ValueError("accountant 'pld' supports only Poisson sampling here (dp-accounting has no PLD for "
                         "sampling without replacement); use accountant 'rdp' or sampling 'poisson'")


@dataclass(frozen=True)
class DpFedAvgAccounting:
    """Privacy of DP-FedAvg: T rounds of the Gaussian mechanism N(0, (z·C)²) on the sum of updates
    clipped to C, over a sample of the N clients with rate q = S/N.

    ``sampling="poisson"``: each client joins independently with probability q; add/remove-one-user
    neighbouring; each round is ``PoissonSampledDpEvent(q, Gaussian(z))``.
    ``sampling="uniform"``: exactly S clients without replacement; replace-one-user neighbouring;
    each round is ``SampledWithoutReplacementDpEvent(N, S, Gaussian(z/2))`` (RDP only).
    Nothing is kept between calls: ``epsilon(T)`` is recomputed from ``event(T)``.
    """

    noise_multiplier: float  # z: noise std on the sum over the clip norm C
    sampling: Sampling
    num_clients: int  # N
    clients_per_round: int  # S (expected S for Poisson)
    delta: float
    accountant: AccountantName = "rdp"

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)
        _sampling(self.num_clients, self.clients_per_round)
        _delta(self.delta)
        _check_mode(self.sampling, self.accountant)
        if self.accountant == "pld" and self.noise_multiplier < PLD_MIN_NOISE_MULTIPLIER:
            raise ValueError(f"noise_multiplier={self.noise_multiplier:g} is too small for the PLD accountant "
                             f"(its cost explodes below {PLD_MIN_NOISE_MULTIPLIER:g}, where epsilon is in the "
                             f"hundreds or more anyway); use accountant 'rdp'")

    @property
    def sampling_rate(self) -> float:
        """q = S/N."""
        return self.clients_per_round / self.num_clients

    @property
    def neighboring_relation(self) -> NeighboringRelation:
        return _relation(self.sampling)

    def noise_stddev(self, clip: float) -> float:
        """Std of the noise the server adds to the sum of clipped updates: z·C."""
        _positive("clip", clip)
        return self.noise_multiplier * clip

    def event(self, rounds: int) -> DpEvent:
        """The composed event of ``rounds`` rounds (``NoOpDpEvent`` for 0)."""
        _count("rounds", rounds, minimum=0)
        if rounds == 0:
            return _dp().NoOpDpEvent()
        one = _round_event(self.noise_multiplier, self.sampling, self.num_clients, self.clients_per_round)
        return _dp().SelfComposedDpEvent(one, rounds)

    def epsilon(self, rounds: int) -> float:
        """ε at ``delta`` after ``rounds`` rounds (0.0 for none); ValueError where the accountant cannot
        certify one (see ``certified``)."""
        return _epsilon(self, rounds)


@functools.lru_cache(maxsize=1024, typed=True)  # pure, and up to a second each: a resumed run asks again
def _epsilon(accounting: DpFedAvgAccounting, rounds: int) -> float:
    event = accounting.event(rounds)
    if rounds == 0:
        return 0.0
    acc = _make_accountant(accounting.accountant, accounting.neighboring_relation)
    return certified(float(acc.compose(event).get_epsilon(accounting.delta)), accounting.noise_multiplier,
                     accounting.accountant)


def certified(epsilon: float, noise_multiplier: float, accountant: str) -> float:
    """``epsilon`` if it is a positive finite number. A Gaussian mechanism with finite noise has ε > 0;
    an accountant answering 0 (or inf/NaN) has left its numerical range (RDP's orders underflow for
    huge z), and such a number must never be reported as a guarantee."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"the {accountant} accountant cannot certify an epsilon at noise multiplier "
                         f"z={noise_multiplier:g} (it answered {epsilon}): the noise is beyond its numerical range")
    return epsilon


def largest_certifiable(eps_of: Callable[[float], float], lo: float, hi: float) -> tuple[float, float]:
    """(z, ε(z)) for the largest z ≤ ``hi`` (halving) whose ε the accountant certifies: the smallest ε
    any calibration in [lo, hi] can promise."""
    z = hi
    while True:
        try:
            return z, eps_of(z)
        except ValueError:
            if z / 2 < lo:
                raise
            z /= 2


@functools.lru_cache(maxsize=64, typed=True)  # pure, and seconds each: a resumed run asks again
def calibrate_noise_multiplier(target_epsilon: float, delta: float, rounds: int, sampling: Sampling,
                               num_clients: int, clients_per_round: int,
                               accountant: AccountantName = "rdp") -> float:
    """The smallest noise multiplier z whose DP-FedAvg ε after ``rounds`` rounds is ≤ ``target_epsilon``
    (Brent's method over ``CALIBRATION_BRACKET``; the answer always meets the target).

    PLD gets expensive as z falls, so its bracket is found from the RDP answer (an upper bound: RDP's
    ε is the looser of the two) and never goes below ``PLD_CALIBRATION_FLOOR``. ValueError if no z
    in the bracket reaches the target, or if the target is so loose that the smallest z meets it.
    """
    _positive("target_epsilon", target_epsilon)
    _delta(delta)
    _count("rounds", rounds)
    _sampling(num_clients, clients_per_round)
    _check_mode(sampling, accountant)
    setting = (f"delta={delta}, rounds={rounds}, sampling={sampling!r}, "
               f"clients_per_round/num_clients={clients_per_round}/{num_clients}, accountant={accountant!r}")

    def eps(z: float, acc: AccountantName = accountant) -> float:
        return DpFedAvgAccounting(z, sampling, num_clients, clients_per_round, delta, acc).epsilon(rounds)

    def too_loose(z: float, e: float) -> ValueError:
        return ValueError(f"target_epsilon={target_epsilon} is met already by noise multiplier z={z:g} "
                          f"(epsilon={e:.4g}, {setting}); calibrate for a smaller target")

    lo, hi = CALIBRATION_BRACKET
    hi, eps_hi = largest_certifiable(eps, lo, hi)
    if eps_hi > target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon} is unreachable: the smallest epsilon the {accountant} "
                         f"accountant certifies here is {eps_hi:.4g} (at noise multiplier z={hi:g}; {setting}); "
                         f"raise the target or delta, train fewer rounds"
                         + (", or use accountant 'pld' with fl.sampling: poisson" if accountant == "rdp" else ""))
    if accountant == "rdp":
        eps_lo = eps(lo)
        if eps_lo <= target_epsilon:
            raise too_loose(lo, eps_lo)
        tol = 1e-6
    else:
        floor = PLD_CALIBRATION_FLOOR
        if eps(floor, "rdp") <= target_epsilon:
            hi = floor  # RDP's z is below the floor; PLD's, no larger in practice, too
        elif eps(hi, "rdp") <= target_epsilon:
            hi = _solve("rdp", sampling, num_clients, clients_per_round, delta, rounds, target_epsilon, floor, hi, 1e-6)
        while eps(hi) > target_epsilon:  # PLD above RDP: only by discretisation, a few steps at most
            hi = min(hi * 1.25, CALIBRATION_BRACKET[1])
        lo = max(hi / 2, floor)
        while (eps_lo := eps(lo)) <= target_epsilon:
            if lo <= floor:
                raise too_loose(lo, eps_lo)
            hi, lo = lo, max(lo / 2, floor)
        tol = 1e-5 * lo
    return _solve(accountant, sampling, num_clients, clients_per_round, delta, rounds, target_epsilon, lo, hi, tol)


def _solve(accountant: AccountantName, sampling: Sampling, num_clients: int, clients_per_round: int, delta: float,
           rounds: int, target_epsilon: float, lo: float, hi: float, tol: float) -> float:
    """``dp_accounting.calibrate_dp_mechanism`` for z in [lo, hi] (ε(lo) > target ≥ ε(hi))."""
    dpa = _dp()
    z = dpa.calibrate_dp_mechanism(
        lambda: _make_accountant(accountant, _relation(sampling)),
        lambda z: DpFedAvgAccounting(z, sampling, num_clients, clients_per_round, delta, accountant).event(rounds),
        target_epsilon, delta, dpa.ExplicitBracketInterval(lo, hi), tol=tol)
    return float(z)


# ------------------------------------------------------------------------------ adaptive clipping


def adaptive_clip_noise_multipliers(z_total: float, clipped_count_stddev: float | None,
                                    expected_clients: int) -> float:
    """z_Δ, the noise multiplier left for the updates when adaptive clipping also releases a noisy
    count (Andrew et al. 2021, Thm. 1): z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2), so
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2).

    σ_b is ``clipped_count_stddev``, the std of the noise on Σ_i (b_i − ½) with b_i = 1[‖Δ_i‖ ≤ C]
    (one client moves it by ½, hence the 2σ_b); None uses the paper's σ_b = m/20 with
    m = ``expected_clients``. Account privacy with z (``z_total``); add N(0, (z_Δ·C)²) to the update
    sum. z = 0 (no noise) gives 0. ValueError if 2σ_b ≤ z (the count alone would spend the budget).
    """
    _count("expected_clients", expected_clients)
    if not (math.isfinite(z_total) and z_total >= 0):
        raise ValueError(f"z_total must be a finite number >= 0, got {z_total!r}")
    sigma_b = expected_clients / 20 if clipped_count_stddev is None else clipped_count_stddev
    _positive("clipped_count_stddev", sigma_b)
    if z_total == 0:
        return 0.0
    if 2 * sigma_b <= z_total:
        raise ValueError(f"clipped_count_stddev={sigma_b:g} is too small for noise multiplier z_total={z_total:g}: "
                         f"need 2*clipped_count_stddev > z_total (the clipped count alone would use the whole "
                         f"privacy budget); increase clipped_count_stddev or decrease z_total")
    return (z_total ** -2 - (2 * sigma_b) ** -2) ** -0.5


def noisy_unclipped_fraction(num_unclipped: int, num_participants: int, noise: float, expected_clients: int) -> float:
    """b̄ = ½ + (Σ_i (b_i − ½) + ξ)/m, ξ ~ N(0, σ_b²) drawn by the caller, m = ``expected_clients``:
    the private estimate of the fraction of updates with ‖Δ_i‖ ≤ C (centred so one client moves the
    sum by ½, as ``adaptive_clip_noise_multipliers`` assumes)."""
    _count("num_participants", num_participants, minimum=0)
    _count("num_unclipped", num_unclipped, minimum=0)
    _count("expected_clients", expected_clients)
    if num_unclipped > num_participants:
        raise ValueError(f"num_unclipped ({num_unclipped}) must not exceed num_participants ({num_participants})")
    return 0.5 + (num_unclipped - num_participants / 2 + noise) / expected_clients


def next_clip_norm(clip: float, noisy_fraction_unclipped: float, target_quantile: float, learning_rate: float) -> float:
    """Geometric quantile update (Andrew et al. 2021, Eq. 2): C ← C·exp(−η_C·(b̄ − γ)).

    b̄ (``noisy_fraction_unclipped``) is the noisy fraction of updates with ‖Δ_i‖ ≤ C, γ the target
    quantile, η_C the clip learning rate (the paper uses 0.2): C shrinks while more than a γ fraction
    is unclipped and grows otherwise.
    """
    _positive("clip", clip)
    if not math.isfinite(noisy_fraction_unclipped):
        raise ValueError(f"noisy_fraction_unclipped must be finite, got {noisy_fraction_unclipped!r}")
    if not 0 <= target_quantile <= 1:
        raise ValueError(f"target_quantile must be in [0, 1], got {target_quantile!r}")
    if not (math.isfinite(learning_rate) and learning_rate >= 0):
        raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate!r}")
    return clip * math.exp(-learning_rate * (noisy_fraction_unclipped - target_quantile))


# ------------------------------------------------------------------------------ (c) local DP


def local_dp_event(noise_multiplier: float, participations: int) -> DpEvent:
    """A client's ``participations`` uploads, each N(0, (z·C)²) on its own clipped update: Gaussian
    mechanisms with multiplier z/2 (sensitivity 2C under replace-one), no sampling."""
    _positive("noise_multiplier", noise_multiplier)
    _count("participations", participations, minimum=0)
    dpa = _dp()
    if participations == 0:
        return dpa.NoOpDpEvent()
    return dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(noise_multiplier / 2), participations)


def local_dp_epsilon(noise_multiplier: float, participations: int, delta: float,
                     accountant: AccountantName = "rdp") -> float:
    """ε at ``delta`` of a client that uploaded ``participations`` times under local DP (0.0 for none).

    The replace-one sensitivity 2C is already folded into the multiplier z/2, so ``"rdp"`` composes
    the event in an RDP accountant with the default add/remove-one relation, where an unsampled
    ``GaussianDpEvent(σ)`` means sensitivity 1 and std σ. (A PLD accountant with ``REPLACE_ONE``
    would double the sensitivity a second time.) ``"pld"``, the tight answer, is computed exactly:
    k Gaussian releases of multiplier σ = z/2 compose to one of multiplier σ/√k, whose ε is the
    analytic Gaussian's (Balle & Wang 2018, ``dp_accounting.get_epsilon_gaussian``) — what a PLD
    accountant approximates (to ~1e-9 relative), without its cost, which explodes as σ/√k falls.
    """
    _delta(delta)
    event = local_dp_event(noise_multiplier, participations)
    if participations == 0:
        return 0.0
    if accountant == "pld":
        eps = float(_dp().get_epsilon_gaussian(noise_multiplier / 2 / math.sqrt(participations), delta))
    else:
        relation = _dp().NeighboringRelation.ADD_OR_REMOVE_ONE
        eps = float(_make_accountant(accountant, relation).compose(event).get_epsilon(delta))
    return certified(eps, noise_multiplier, accountant)
