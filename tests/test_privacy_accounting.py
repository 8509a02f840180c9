"""User-level DP math in fedllm.fl.privacy: FedLLM-Bench's σ, DP-FedAvg accounting against
dp-accounting called directly, calibration, adaptive clipping and local DP."""

from __future__ import annotations

import math

import dp_accounting as dpa
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedllm.fl.privacy import (
    GUARANTEES,
    DpFedAvgAccounting,
    adaptive_clip_noise_multipliers,
    calibrate_noise_multiplier,
    fedllm_bench_sigma,
    local_dp_epsilon,
    next_clip_norm,
    noisy_unclipped_fraction,
)


def sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits - 1}e}")


# ------------------------------------------------------------------------------ (a) FedLLM-Bench


def test_fedllm_bench_sigma_hand_computed():
    # Δ_l = 2·lr·C/(|D|/N) = 2·2e-5·1/(53000/100) = 4e-5/530 = 7.5472e-08
    # q = S/N = 5/100 = 0.05;  2·q·T·ln(1/δ) = 2·0.05·100·ln(1e4) = 10·9.21034 = 92.1034
    # σ = Δ_l·√92.1034/ε = 7.5472e-08·9.59705/1 = 7.2431e-07
    delta_l = 2 * 2e-5 * 1.0 / (53_000 / 100)
    assert sig(delta_l) == 7.547e-08
    sigma = fedllm_bench_sigma(epsilon=1.0, delta=1e-4, lr=2e-5, clip=1.0, total_samples=53_000,
                               num_clients=100, clients_per_round=5, rounds=100)
    assert sig(sigma) == 7.243e-07
    # σ ∝ 1/ε and ∝ √T
    assert fedllm_bench_sigma(2.0, 1e-4, 2e-5, 1.0, 53_000, 100, 5, 400) == pytest.approx(sigma)


@pytest.mark.parametrize("kwargs, name", [
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.0}, "delta"),
    ({"clip": 0.0}, "clip"),
    ({"lr": 0.0}, "lr"),
    ({"total_samples": 0}, "total_samples"),
    ({"num_clients": 0}, "num_clients"),
    ({"clients_per_round": 0}, "clients_per_round"),
    ({"rounds": 0}, "rounds"),
    ({"clients_per_round": 101}, "clients_per_round"),
])
def test_fedllm_bench_sigma_validates(kwargs, name):
    base = {"epsilon": 1.0, "delta": 1e-4, "lr": 2e-5, "clip": 1.0, "total_samples": 53_000, "num_clients": 100,
            "clients_per_round": 5, "rounds": 100}
    with pytest.raises(ValueError, match=name):
        fedllm_bench_sigma(**{**base, **kwargs})


# ------------------------------------------------------------------------------ (b) DP-FedAvg


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_poisson_epsilon_matches_dp_accounting(accountant):
    z, n, s, t, delta = 1.1, 100, 10, 50, 1e-5
    direct_acc = (RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE) if accountant == "rdp"
                  else PLDAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE))
    direct_acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(1.1)), 50))
    direct = direct_acc.get_epsilon(1e-5)
    ours = DpFedAvgAccounting(z, "poisson", n, s, delta, accountant)
    assert ours.epsilon(t) == pytest.approx(direct, rel=1e-12)
    assert 0 < direct < 10


def test_uniform_epsilon_matches_dp_accounting_with_half_multiplier():
    # Replace-one moves the sum by 2C; the noise is z·C, so the event's multiplier is z/2.
    direct_acc = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    direct_acc.compose(dpa.SelfComposedDpEvent(
        dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(2.0 / 2)), 50))
    direct = direct_acc.get_epsilon(1e-5)
    ours = DpFedAvgAccounting(2.0, "uniform", 100, 10, 1e-5, "rdp").epsilon(50)
    assert ours == pytest.approx(direct, rel=1e-12)
    # and not the value with the full multiplier (the factor 2 matters)
    wrong = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    wrong.compose(dpa.SelfComposedDpEvent(dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(2.0)), 50))
    assert ours > 1.5 * wrong.get_epsilon(1e-5)


def test_uniform_sampling_everyone_is_a_gaussian_with_sensitivity_2c():
    # S = N: no amplification, T Gaussian releases with multiplier z/2 — the local-DP composition.
    z, t, delta = 3.0, 20, 1e-5
    full = DpFedAvgAccounting(z, "uniform", 10, 10, delta, "rdp").epsilon(t)
    assert full == pytest.approx(local_dp_epsilon(z, t, delta, "rdp"), rel=1e-9)


@pytest.mark.parametrize("sampling, accountant", [("poisson", "rdp"), ("poisson", "pld"), ("uniform", "rdp")])
def test_epsilon_grows_with_rounds_and_falls_with_noise(sampling, accountant):
    acc = DpFedAvgAccounting(1.5, sampling, 100, 10, 1e-5, accountant)
    eps = [acc.epsilon(t) for t in (0, 1, 10, 100)]
    assert eps[0] == 0.0
    assert eps[1] < eps[2] < eps[3]
    by_z = [DpFedAvgAccounting(z, sampling, 100, 10, 1e-5, accountant).epsilon(50) for z in (1.2, 1.6, 2.4)]
    assert by_z[0] > by_z[1] > by_z[2]


def test_epsilon_is_recomputed_from_the_event():
    acc = DpFedAvgAccounting(1.0, "poisson", 100, 10, 1e-5, "rdp")
    assert acc.epsilon(30) == acc.epsilon(30)  # no hidden state: a resumed run gets the same ε
    ev = acc.event(30)
    assert isinstance(ev, dpa.SelfComposedDpEvent) and ev.count == 30
    assert isinstance(acc.event(0), dpa.NoOpDpEvent)
    assert acc.sampling_rate == 0.1 and acc.noise_stddev(0.5) == 0.5


def test_pld_with_uniform_sampling_is_refused():
    with pytest.raises(ValueError, match="pld.*Poisson"):
        DpFedAvgAccounting(1.0, "uniform", 100, 10, 1e-5, "pld")
    with pytest.raises(ValueError, match="pld.*Poisson"):
        calibrate_noise_multiplier(1.0, 1e-5, 10, "uniform", 100, 10, "pld")


@pytest.mark.parametrize("kwargs, name", [
    ({"noise_multiplier": 0.0}, "noise_multiplier"),
    ({"delta": 0.0}, "delta"),
    ({"clients_per_round": 11}, "clients_per_round"),
    ({"sampling": "shuffle"}, "sampling"),
    ({"accountant": "moments"}, "accountant"),
    ({"accountant": "pld", "noise_multiplier": 0.01}, "noise_multiplier"),
])
def test_dp_fedavg_accounting_validates(kwargs, name):
    base = {"noise_multiplier": 1.0, "sampling": "poisson", "num_clients": 10, "clients_per_round": 5,
            "delta": 1e-5, "accountant": "rdp"}
    with pytest.raises(ValueError, match=name):
        DpFedAvgAccounting(**{**base, **kwargs})


@pytest.mark.parametrize("target, delta, rounds, sampling, n, s, accountant", [
    (2.0, 1e-4, 100, "poisson", 100, 10, "rdp"),
    (1.0, 1e-5, 1000, "poisson", 1000, 20, "rdp"),
    (2.0, 1e-4, 100, "poisson", 100, 10, "pld"),
    (4.0, 1e-5, 30, "uniform", 50, 5, "rdp"),
])
def test_calibrate_noise_multiplier(target, delta, rounds, sampling, n, s, accountant):
    z = calibrate_noise_multiplier(target, delta, rounds, sampling, n, s, accountant)

    def eps(zz: float) -> float:
        return DpFedAvgAccounting(zz, sampling, n, s, delta, accountant).epsilon(rounds)

    assert 0.99 * target <= eps(z) <= target
    assert eps(0.98 * z) > target
    if accountant == "pld":  # the tighter accountant needs less noise for the same target
        assert z < calibrate_noise_multiplier(target, delta, rounds, sampling, n, s, "rdp")


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibrate_unreachable_target_raises(accountant):
    with pytest.raises(ValueError, match=r"target_epsilon=1e-09 is unreachable"):
        calibrate_noise_multiplier(1e-9, 1e-4, 100, "poisson", 100, 10, accountant)


def test_calibrate_absurdly_loose_target_raises():
    with pytest.raises(ValueError, match=r"target_epsilon=1000000000.0 is met already"):
        calibrate_noise_multiplier(1e9, 1e-4, 10, "poisson", 100, 10, "rdp")


# ------------------------------------------------------------------------------ adaptive clipping


def test_adaptive_clip_noise_multiplier_hand_computed():
    # z = 1, σ_b = 1: z_Δ = (1 − 1/4)^(−1/2) = 1/√0.75 = 1.154700538
    assert adaptive_clip_noise_multipliers(1.0, 1.0, 20) == pytest.approx(1.154700538, rel=1e-9)
    # default σ_b = m/20 = 100/20 = 5: z_Δ = (1/0.81 − 1/100)^(−1/2) = (1.2345679 − 0.01)^(−1/2)
    #   = 1.2245679^(−1/2) = 1/1.1066019 = 0.9036673
    assert adaptive_clip_noise_multipliers(0.9, None, 100) == pytest.approx(0.9036673, rel=1e-6)
    # recombining gives back z
    z_d = adaptive_clip_noise_multipliers(1.3, 2.0, 40)
    assert (z_d ** -2 + (2 * 2.0) ** -2) ** -0.5 == pytest.approx(1.3)
    assert adaptive_clip_noise_multipliers(0.0, 1.0, 10) == 0.0


def test_adaptive_clip_noise_multiplier_count_noise_too_small():
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        adaptive_clip_noise_multipliers(1.0, 0.5, 20)  # 2σ_b = z
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        adaptive_clip_noise_multipliers(1.0, None, 10)  # σ_b = 0.5 by default


def test_next_clip_norm_hand_computed():
    # C·exp(−η(b̄ − γ)) = 1·exp(−0.2·(0.8 − 0.5)) = exp(−0.06) = 0.9417645
    assert next_clip_norm(1.0, 0.8, 0.5, 0.2) == pytest.approx(0.9417645336, rel=1e-9)
    # too many clipped (b̄ < γ): C grows; 2·exp(0.2·0.3) = 2.1236731
    assert next_clip_norm(2.0, 0.2, 0.5, 0.2) == pytest.approx(2.1236730947, rel=1e-9)
    assert next_clip_norm(1.5, 0.5, 0.5, 0.2) == 1.5
    with pytest.raises(ValueError, match="target_quantile"):
        next_clip_norm(1.0, 0.5, 1.5, 0.2)


def test_noisy_unclipped_fraction():
    # ½ + (Σ(b_i − ½) + ξ)/m = 0.5 + (7 − 5 + 1.0)/10 = 0.8
    assert noisy_unclipped_fraction(7, 10, 1.0, 10) == pytest.approx(0.8)
    assert noisy_unclipped_fraction(7, 10, 0.0, 10) == pytest.approx(0.7)


# ------------------------------------------------------------------------------ (c) local DP


def test_local_dp_epsilon_matches_direct_composition():
    z, k, delta = 2.0, 5, 1e-5
    direct = RdpAccountant().compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z / 2), k)).get_epsilon(delta)
    assert local_dp_epsilon(z, k, delta) == pytest.approx(direct, rel=1e-12)
    # "pld" is the exact composed Gaussian (multiplier (z/2)/√k), which a PLD accountant approximates
    direct_pld = PLDAccountant().compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z / 2), k)).get_epsilon(delta)
    assert local_dp_epsilon(z, k, delta, "pld") == pytest.approx(direct_pld, rel=1e-8)
    assert local_dp_epsilon(z, k, delta, "pld") == dpa.get_epsilon_gaussian(z / 2 / math.sqrt(k), delta)
    assert local_dp_epsilon(z, k, delta, "pld") < local_dp_epsilon(z, k, delta, "rdp")  # PLD is tighter


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_local_dp_epsilon_grows_with_participations(accountant):
    eps = [local_dp_epsilon(4.0, k, 1e-5, accountant) for k in (0, 1, 2, 10, 1000)]
    assert eps[0] == 0.0
    assert eps[1] < eps[2] < eps[3] < eps[4] < math.inf


# ------------------------------------------------------------------------------ guarantees


def test_guarantees_cover_every_mode():
    assert set(GUARANTEES) == {"fedllm-bench", "dp-fedavg-poisson", "dp-fedavg-uniform", "local"}
    assert "not" in GUARANTEES["fedllm-bench"].lower() and "nominal" in GUARANTEES["fedllm-bench"]
    for mode in ("dp-fedavg-poisson", "dp-fedavg-uniform", "local"):
        assert "User-level" in GUARANTEES[mode]
