"""Robust aggregators against hand-computed numbers, their options, an attack they withstand (and
FedAvg's mean does not), and their combination with server optimizers and checkpoints.

Unless said otherwise: one adapter tensor "x" (float64), w0 = [0, 0] and FedAvg's server step
w ← w + Δ (η_s = 1), so the new global adapter is the aggregated Δ itself.
"""

from __future__ import annotations

import pytest
import torch

from fedllm.fl import AGGREGATORS, ClientUpdate, FLParams, build_algorithm
from fedllm.fl import state as S
from fedllm.fl.aggregators.krum import krum_scores
from fedllm.fl.aggregators.trimmed_mean import trim_count
from fedllm.fl.registries import build_component, resolve_spec
from fedllm.fl.state import State

ROBUST = ["median", "trimmed_mean", "krum", "multikrum", "norm_bounded_mean"]
ZERO = {"x": torch.zeros(2, dtype=torch.float64)}


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def ups(*deltas: list[float], samples: list[int] | None = None) -> list[ClientUpdate]:
    return [ClientUpdate(f"c{i}", {"x": t(*d)}, samples[i] if samples else 10) for i, d in enumerate(deltas)]


def run(aggregator: object, updates: list[ClientUpdate], **kw: object) -> State:
    """One FedAvg round from w0 = 0 with the given aggregator: the aggregated Δ."""
    alg = build_algorithm(FLParams(aggregator=aggregator, **kw), len(updates))  # type: ignore[arg-type]
    return alg.aggregate(ZERO, updates)


def close(a: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(a, t(*expected), rtol=0, atol=1e-12)


def direct(spec: object) -> object:
    """The aggregator object itself, built from a spec as the server builds it."""
    return build_component(AGGREGATORS, resolve_spec(AGGREGATORS, spec))


def test_registered() -> None:
    assert set(ROBUST) <= set(AGGREGATORS)
    assert {n for n in ROBUST if AGGREGATORS[n].uses_weights} == {"norm_bounded_mean"}


# ----------------------------------------------------------------- median


def test_median_odd_and_even() -> None:
    three = ([1, 5], [2, -1], [10, 0])
    # odd: x0 sorted 1, 2, 10 → 2; x1 sorted −1, 0, 5 → 0
    close(run("median", ups(*three))["x"], [2.0, 0.0])
    # even: add [4, 3]; x0 sorted 1, 2, 4, 10 → (2 + 4)/2 = 3; x1 sorted −1, 0, 3, 5 → (0 + 3)/2 = 1.5
    close(run("median", ups(*three, [4, 3]))["x"], [3.0, 1.5])


def test_median_ignores_sample_counts() -> None:
    # client 2 claims 10⁶ samples: FedAvg's mean follows it, the median does not (still [2, 0])
    claimed = ups([1, 5], [2, -1], [10, 0], samples=[1, 1, 1_000_000])
    close(run("median", claimed)["x"], [2.0, 0.0])
    assert run("mean", claimed)["x"][0] > 9.99
    alg = build_algorithm(FLParams(aggregator="median"), 3)
    assert alg.step(ZERO, claimed).weights == [1 / 3] * 3
    assert alg.describe()["weighting"] is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_median_keeps_dtype(dtype: torch.dtype) -> None:
    deltas = [{"x": torch.tensor(v, dtype=dtype)} for v in ([1.0, 2.0], [3.0, 2.5], [0.5, 9.0], [2.0, 3.5])]
    out = direct("median").aggregate(deltas, [0.25] * 4)  # type: ignore[attr-defined]
    # x0 sorted 0.5, 1, 2, 3 → 1.5; x1 sorted 2, 2.5, 3.5, 9 → 3 (exact in bfloat16 too)
    assert out["x"].dtype == dtype
    assert out["x"].tolist() == [1.5, 3.0]


# ----------------------------------------------------------------- trimmed mean

FIVE = ([1, -3], [2, 0], [3, 100], [4, 1], [100, 2])


def test_trimmed_mean_drops_k_per_side() -> None:
    # default β = 0.2, n = 5: k = ⌊1.0⌋ = 1. x0 sorted 1, 2, 3, 4, 100 → mean(2, 3, 4) = 3;
    # x1 sorted −3, 0, 1, 2, 100 → mean(0, 1, 2) = 1
    close(run("trimmed_mean", ups(*FIVE))["x"], [3.0, 1.0])
    # β = 0.2, n = 4: k = ⌊0.8⌋ = 0 → the plain mean: [(1+2+3+4)/4, (−3+0+100+1)/4] = [2.5, 24.5]
    close(run("trimmed_mean", ups(*FIVE[:4]))["x"], [2.5, 24.5])
    # β = 0.4, n = 5: k = 2 → only the middle value is left: the median [3, 1]
    close(run({"name": "trimmed_mean", "trim_ratio": 0.4}, ups(*FIVE))["x"], [3.0, 1.0])
    # β = 0, nothing trimmed: [(1+2+3+4+100)/5, (−3+0+100+1+2)/5] = [22, 20]
    close(run({"name": "trimmed_mean", "trim_ratio": 0.0}, ups(*FIVE))["x"], [22.0, 20.0])


def test_trim_count() -> None:
    assert [trim_count(n, 0.2) for n in (1, 4, 5, 9, 10, 11)] == [0, 0, 1, 1, 2, 2]
    assert trim_count(100, 0.29) == 29  # 0.29·100 = 28.999999999999996 in floating point
    assert trim_count(10, 0.3) == 3
    with pytest.raises(ValueError, match=r"k=2 values at each end of n=4 updates, leaving 0"):
        trim_count(4, 0.5)  # the option forbids β ≥ 0.5; the count rule still refuses


# ----------------------------------------------------------------- krum / multi-krum
# n = 5, f = 1: each score sums the n − f − 2 = 2 smallest squared distances to the others.
#   a = [0, 0], b = [1, 0], c = [0, 2], d = [1, 1], e = [10, 10]
#   ‖·‖²: ab 1, ac 4, ad 2, ae 200, bc 5, bd 1, be 181, cd 2, ce 164, de 162
#   a: {1, 4, 2, 200} → 1 + 2 = 3;  b: {1, 5, 1, 181} → 2;  c: {4, 5, 2, 164} → 6
#   d: {2, 1, 2, 162} → 3;  e: {200, 181, 164, 162} → 326
KRUM = ([0, 0], [1, 0], [0, 2], [1, 1], [10, 10])


def test_krum_scores_and_choice() -> None:
    deltas = [u.delta for u in ups(*KRUM)]
    assert krum_scores(deltas, 1) == [3.0, 2.0, 6.0, 3.0, 326.0]
    # all tensors count together: the same points split over two keys score the same
    split = [{"p": t(d[0]), "q": t(d[1])} for d in KRUM]
    assert krum_scores(split, 1) == [3.0, 2.0, 6.0, 3.0, 326.0]
    # Krum: the lowest score is b's
    close(run("krum", ups(*KRUM))["x"], [1.0, 0.0])
    # f = 0: 3 neighbours; a: 1+2+4 = 7, b: 1+1+5 = 7, c: 2+4+5 = 11, d: 1+2+2 = 5, e: 162+164+181 = 507 → d
    close(run({"name": "krum", "byzantine": 0}, ups(*KRUM))["x"], [1.0, 1.0])


def test_krum_ties_go_to_lower_index() -> None:
    # a unit square plus an outlier: a, b, c, d all score 1 + 1 = 2 → a (index 0);
    # reversed (e, d, c, b, a): d, c, b, a tie again → d (now index 1)
    square = ([0, 0], [1, 0], [0, 1], [1, 1], [10, 10])
    close(run("krum", ups(*square))["x"], [0.0, 0.0])
    close(run("krum", ups(*reversed(square)))["x"], [1.0, 1.0])


def test_multikrum_average() -> None:
    # order by (score, index): b (2), a (3), d (3), c (6), e (326)
    # default m = n − f = 4: (b + a + d + c)/4 = [2, 3]/4 = [0.5, 0.75]
    close(run("multikrum", ups(*KRUM))["x"], [0.5, 0.75])
    # m = 3: (b + a + d)/3 = [2/3, 1/3]
    close(run({"name": "multikrum", "select": 3}, ups(*KRUM))["x"], [2 / 3, 1 / 3])
    # m = 2: a and d tie at 3, a has the lower index: (b + a)/2 = [0.5, 0]
    close(run({"name": "multikrum", "select": 2}, ups(*KRUM))["x"], [0.5, 0.0])
    # m = 1 is Krum
    close(run({"name": "multikrum", "select": 1}, ups(*KRUM))["x"], [1.0, 0.0])


@pytest.mark.parametrize("name", ["krum", "multikrum"])
def test_krum_condition(name: str) -> None:
    # n = 4, f = 1: 4 ≤ 2·1 + 2
    with pytest.raises(ValueError, match=r"n > 2f \+ 2.*n=4 with f=1.*byzantine to at most 0"):
        run(name, ups(*KRUM[:4]))
    # n = 5, f = 2: 5 ≤ 6
    with pytest.raises(ValueError, match=r"n=5 with f=2.*at least 7 clients"):
        run({"name": name, "byzantine": 2}, ups(*KRUM))
    # f = 0 needs n ≥ 3
    with pytest.raises(ValueError, match=r"n=2 with f=0.*at least 3"):
        run({"name": name, "byzantine": 0}, ups(*KRUM[:2]))


def test_multikrum_select_above_n_minus_f() -> None:
    with pytest.raises(ValueError, match=r"select=5 exceeds n − f"):
        run({"name": "multikrum", "select": 5}, ups(*KRUM))


# ----------------------------------------------------------------- norm-bounded mean


def test_norm_bounded_mean_with_weights() -> None:
    # C = 1: a = [3, 4] (‖a‖ = 5) → [0.6, 0.8]; b = [0.3, 0.4] (‖b‖ = 0.5) unchanged; c = [0, −2] → [0, −1]
    # samples 1, 2, 1 → p = [0.25, 0.5, 0.25]:
    # Δ = 0.25·[0.6, 0.8] + 0.5·[0.3, 0.4] + 0.25·[0, −1] = [0.15 + 0.15, 0.2 + 0.2 − 0.25] = [0.3, 0.15]
    updates = ups([3, 4], [0.3, 0.4], [0, -2], samples=[1, 2, 1])
    close(run({"name": "norm_bounded_mean", "max_norm": 1.0}, updates)["x"], [0.3, 0.15])
    # uniform weighting: ([0.6, 0.8] + [0.3, 0.4] + [0, −1])/3 = [0.3, 0.0666...]
    uniform = run({"name": "norm_bounded_mean", "max_norm": 1.0}, updates, weighting="uniform")
    close(uniform["x"], [0.3, 0.2 / 3])
    # a bound above every norm is the plain weighted mean
    close(run({"name": "norm_bounded_mean", "max_norm": 10.0}, updates)["x"],
          [0.75 + 0.15, 1.0 + 0.2 - 0.5])


# ----------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ({"name": "trimmed_mean", "trim_ratio": 0.6}, "trim_ratio"),
        ({"name": "trimmed_mean", "trim_ratio": -0.1}, "trim_ratio"),
        ({"name": "krum", "byzantine": -1}, "byzantine"),
        ({"name": "multikrum", "byzantine": -1}, "byzantine"),
        ({"name": "multikrum", "select": 0}, "select"),
        ({"name": "norm_bounded_mean"}, "max_norm"),
        ({"name": "norm_bounded_mean", "max_norm": 0}, "max_norm"),
        ({"name": "median", "trim_ratio": 0.1}, "trim_ratio"),  # an option median does not have
        ({"name": "krum", "select": 2}, "select"),  # select is Multi-Krum's
        ({"name": "trimmed_mean", "beta": 0.1}, "beta"),
    ],
)
def test_bad_options_name_the_option(spec: dict, option: str) -> None:
    with pytest.raises(ValueError, match=rf"aggregator '{spec['name']}': {option}"):
        FLParams(aggregator=spec)


def test_options_filled_in() -> None:
    assert FLParams(aggregator="trimmed_mean").aggregator == {"name": "trimmed_mean", "trim_ratio": 0.2}
    assert FLParams(aggregator="multikrum").aggregator == {"name": "multikrum", "byzantine": 1, "select": None}
    with pytest.raises(ValueError, match="unknown aggregator 'krun'.*did you mean 'krum'"):
        FLParams(aggregator="krun")


# ----------------------------------------------------------------- inputs untouched

SPECS = ["median", "trimmed_mean", "krum", "multikrum", {"name": "norm_bounded_mean", "max_norm": 1.0}]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_inputs_are_not_modified_or_aliased(spec: object) -> None:
    gen = torch.Generator().manual_seed(3)
    deltas = [{"x": torch.randn(4, generator=gen, dtype=torch.float64),
               "y": torch.randn(2, 3, generator=gen, dtype=torch.float64)} for _ in range(5)]
    before = [S.clone(d) for d in deltas]
    out = direct(spec).aggregate(deltas, [0.2] * 5)  # type: ignore[attr-defined]
    assert out.keys() == deltas[0].keys() and out["y"].shape == (2, 3)
    for v in out.values():
        v.add_(1.0)
    assert all(torch.equal(d[k], b[k]) for d, b in zip(deltas, before) for k in d)


# ----------------------------------------------------------------- robustness shown


def honest_and_attacker(attack: float) -> tuple[list[ClientUpdate], State, float]:
    """5 honest clients around a common direction u = 0.1·1 (noise σ = 0.05, 16 coordinates) and one
    attacker sending its own honest-looking update times ``attack``; all claim 10 samples.
    Returns the updates, the honest mean and the honest radius (largest honest distance to it)."""
    gen = torch.Generator().manual_seed(0)
    u = torch.full((16,), 0.1, dtype=torch.float64)
    deltas = [{"x": u + 0.05 * torch.randn(16, generator=gen, dtype=torch.float64)} for _ in range(6)]
    honest = deltas[:5]
    mean = S.weighted_sum(honest, [0.2] * 5)
    radius = max(S.norm(S.sub(d, mean)) for d in honest)
    updates = [ClientUpdate(f"h{i}", d, 10) for i, d in enumerate(honest)]
    updates.append(ClientUpdate("attacker", S.scale(deltas[5], attack), 10))
    return updates, mean, radius


# ‖honest update‖ ≈ 0.37–0.51, so C = 0.5 is about an honest norm (Sun et al.'s choice of bound)
ROBUST_SPECS = ["median", "trimmed_mean", "krum", "multikrum", {"name": "norm_bounded_mean", "max_norm": 0.5}]


@pytest.mark.parametrize(("attack", "factor"), [(100.0, 20.0), (-10.0, 3.0)], ids=["scaled_x100", "sign_flip_x10"])
def test_robust_aggregators_withstand_one_attacker(attack: float, factor: float) -> None:
    updates, honest_mean, radius = honest_and_attacker(attack)
    w = {"x": torch.zeros(16, dtype=torch.float64)}

    def distance(spec: object) -> float:
        out = build_algorithm(FLParams(algorithm="fedavg", aggregator=spec), 6).aggregate(w, updates)
        return S.norm(S.sub(out, honest_mean))  # w = 0, so out is Δ

    # FedAvg's mean is dragged far outside the honest cloud (×100: ≈ 30 radii; sign flip ×10: ≈ 3.3 radii)
    assert distance("mean") > factor * radius
    # every robust aggregator stays inside it (distance < the largest honest deviation from the mean)
    for spec in ROBUST_SPECS:
        d = distance(spec)
        assert d < radius, f"{spec}: {d:.3f} ≥ honest radius {radius:.3f}"
    # Multi-Krum (m = n − f = 5) drops exactly the attacker: the honest mean itself
    assert distance("multikrum") < 1e-12


# ----------------------------------------------------------------- with server optimizers


def test_fedadam_over_median() -> None:
    # dyadic values, so the hand-computed medians are exact in float64
    rounds = [([1, 5], [2, -1], [10, 0]), ([0.5, 0.125], [-0.25, 0.375], [0.25, -4.0], [0.75, 0.25])]
    # round 2: x0 −0.25, 0.25, 0.5, 0.75 → 0.375; x1 −4, 0.125, 0.25, 0.375 → 0.1875
    medians = [[2.0, 0.0], [0.375, 0.1875]]
    p = dict(algorithm="fedadam", server_lr=0.1, beta1=0.5, beta2=0.75, tau=0.1)
    alg = build_algorithm(FLParams(aggregator="median", **p), 4)  # type: ignore[arg-type]
    ref = build_algorithm(FLParams(**p), 4)  # type: ignore[arg-type]
    w = w_ref = {"x": t(1.0, 2.0)}
    for deltas, med in zip(rounds, medians):
        w = alg.aggregate(w, ups(*deltas, samples=list(range(1, len(deltas) + 1))))
        # the same server optimizer fed the median as its only update (a one-client mean is the update)
        w_ref = ref.aggregate(w_ref, ups(med))
        assert torch.equal(w["x"], w_ref["x"])
    sd = alg.state_dict()
    assert set(sd) == {"rounds_done", "m/x", "v/x"} and sd["rounds_done"] == 2
    assert all(torch.equal(sd[k], ref.state_dict()[k]) for k in ("m/x", "v/x"))


def random_updates(gen: torch.Generator, n: int) -> list[ClientUpdate]:
    return [ClientUpdate(f"c{i}", {"a": 0.1 * torch.randn(2, 2, generator=gen),
                                   "b": 0.1 * torch.randn(3, generator=gen)}, i + 1) for i in range(n)]


@pytest.mark.parametrize(
    "params",
    [
        FLParams("fedadam", aggregator="krum", beta1=0.5, bias_correction=True),
        FLParams("fedavgm", aggregator={"name": "multikrum", "byzantine": 1, "select": 3}, beta1=0.5),
        FLParams("fedavg", server_optimizer="yogi", aggregator={"name": "trimmed_mean", "trim_ratio": 0.25}),
        FLParams("fedavg", server_optimizer="adam", aggregator={"name": "norm_bounded_mean", "max_norm": 0.2}),
    ],
    ids=["fedadam+krum", "fedavgm+multikrum", "yogi+trimmed_mean", "adam+norm_bounded_mean"],
)
def test_checkpoint_round_trip_with_server_optimizer(params: FLParams) -> None:
    gen = torch.Generator().manual_seed(5)
    w = {"a": torch.randn(2, 2, generator=gen), "b": torch.randn(3, generator=gen)}
    rounds = [random_updates(gen, 5) for _ in range(3)]
    original = build_algorithm(params, 5)
    w = original.aggregate(w, rounds[0])
    saved = original.state_dict()
    assert len(saved) > 1  # the optimizer's state is in it
    resumed = build_algorithm(params, 5)
    resumed.load_state_dict(saved)
    w_a = w_b = w
    for r in rounds[1:]:
        w_a = original.aggregate(w_a, r)
        w_b = resumed.aggregate(w_b, [ClientUpdate(u.client_id, S.clone(u.delta), u.num_samples) for u in r])
        assert all(torch.equal(w_a[k], w_b[k]) for k in w)
    sa, sb = original.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys() and sa["rounds_done"] == 3
    assert all(torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa)
