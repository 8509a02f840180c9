"""Federated algorithms against hand-computed numbers, in both semantics, plus a conformance table.

Shared scenario for the server tests (one adapter tensor "x", float64):
  w0 = [1, 2]; clients a (n=1) and b (n=3).
  round 1: Δ_a = [0.4, -0.2], Δ_b = [0.0, 0.3]
           samples-weighted Δ = 0.25·Δ_a + 0.75·Δ_b = [0.1, 0.175];  uniform Δ = [0.2, 0.05]
  round 2: Δ_a = [-0.4, 0.2], Δ_b = [0.4, 0.0]
           samples-weighted Δ = [-0.1 + 0.3, 0.05] = [0.2, 0.05];  uniform Δ = [0.0, 0.1]
"""

from __future__ import annotations

import math

import pytest
import torch

from fedllm.fl import ALGORITHMS, Algorithm, ClientUpdate, FLParams, build_algorithm, register_algorithm
from fedllm.fl import state as S
from fedllm.fl.state import State

COMPATS = ["paper", "openfedllm"]
W0 = {"x": torch.tensor([1.0, 2.0], dtype=torch.float64)}
ROUND1 = [("a", 1, [0.4, -0.2]), ("b", 3, [0.0, 0.3])]
ROUND2 = [("a", 1, [-0.4, 0.2]), ("b", 3, [0.4, 0.0])]


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def updates(spec: list, seen: list[int] | None = None, control: list | None = None) -> list[ClientUpdate]:
    out = []
    for i, (cid, n, d) in enumerate(spec):
        extras = {"control_delta": {"x": t(*control[i])}} if control else {}
        out.append(ClientUpdate(cid, {"x": t(*d)}, n, num_seen=seen[i] if seen else 0, extras=extras))
    return out


def two_rounds(alg: Algorithm, **kw) -> tuple[State, State]:
    w1 = alg.aggregate(W0, updates(ROUND1, **kw.get("r1", {})))
    w2 = alg.aggregate(w1, updates(ROUND2, **kw.get("r2", {})))
    return w1, w2


def close(a: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(a, t(*expected), rtol=0, atol=1e-12)


# ----------------------------------------------------------------- weighting


def test_weighting_modes() -> None:
    ups = updates(ROUND1, seen=[6, 2])
    assert build_algorithm(FLParams(weighting="samples"), 2).weights(ups) == [0.25, 0.75]
    assert build_algorithm(FLParams(weighting="uniform"), 2).weights(ups) == [0.5, 0.5]
    assert build_algorithm(FLParams(weighting="seen"), 2).weights(ups) == [0.75, 0.25]


def test_all_zero_weights_raise() -> None:
    alg = build_algorithm(FLParams(weighting="seen"), 2)
    with pytest.raises(ValueError, match="sum to 0"):
        alg.aggregate(W0, updates(ROUND1, seen=[0, 0]))


def test_compat_forces_openfedllm_weighting() -> None:
    ups = updates(ROUND1, seen=[6, 2])
    # OpenFedLLM: FedAvg-family weights by held samples, FedOpt by a uniform mean, whatever params.weighting says.
    for name in ["fedavg", "fedprox", "scaffold", "fedavgm"]:
        assert build_algorithm(FLParams(name, "openfedllm", weighting="seen"), 2).weights(ups) == [0.25, 0.75]
    for name in ["fedadagrad", "fedadam", "fedyogi"]:
        assert build_algorithm(FLParams(name, "openfedllm", weighting="samples"), 2).weights(ups) == [0.5, 0.5]
        assert build_algorithm(FLParams(name, "paper", weighting="seen"), 2).weights(ups) == [0.75, 0.25]


def test_unknown_compat_raises() -> None:
    with pytest.raises(ValueError, match="compat"):
        build_algorithm(FLParams(compat="flower"), 2)  # type: ignore[arg-type]


# ----------------------------------------------------------------- local / fedavg / fedprox server


@pytest.mark.parametrize("compat", COMPATS)
def test_local_is_w_plus_delta_ignoring_weights_and_lr(compat: str) -> None:
    alg = build_algorithm(FLParams("local", compat, weighting="seen", server_lr=5.0), 3)
    assert alg.single_client
    # n = 0 and seen = 0 would make every weighting fail; Local does not weight: [1, 2] + [0.4, -0.2]
    w1 = alg.aggregate(W0, [ClientUpdate("a", {"x": t(0.4, -0.2)}, num_samples=0)])
    close(w1["x"], [1.4, 1.8])
    with pytest.raises(ValueError, match="exactly one client"):
        alg.aggregate(W0, updates(ROUND1))


@pytest.mark.parametrize(
    ("name", "compat", "weighting", "lr", "w1", "w2"),
    [
        # samples: w1 = [1, 2] + [0.1, 0.175]; w2 = w1 + [0.2, 0.05]
        ("fedavg", "paper", "samples", None, [1.1, 2.175], [1.3, 2.225]),
        ("fedprox", "paper", "samples", None, [1.1, 2.175], [1.3, 2.225]),
        # uniform, η_s = 0.5: w1 = [1, 2] + 0.5·[0.2, 0.05]; w2 = w1 + 0.5·[0.0, 0.1]
        ("fedavg", "paper", "uniform", 0.5, [1.1, 2.025], [1.1, 2.075]),
        # seen (a: 3, b: 1 in both rounds): Δ1 = [0.3, -0.075], Δ2 = [-0.2, 0.15]
        ("fedavg", "paper", "seen", None, [1.3, 1.925], [1.1, 2.075]),
        # openfedllm ignores weighting="uniform" and weights by samples: same as the first row
        ("fedavg", "openfedllm", "uniform", None, [1.1, 2.175], [1.3, 2.225]),
        ("fedprox", "openfedllm", "uniform", None, [1.1, 2.175], [1.3, 2.225]),
        # ... but keeps η_s (default 1 reproduces OpenFedLLM): w1 = [1, 2] + 0.5·[0.1, 0.175]
        ("fedavg", "openfedllm", "samples", 0.5, [1.05, 2.0875], [1.15, 2.1125]),
    ],
)
def test_fedavg_family(name: str, compat: str, weighting: str, lr: float | None, w1: list, w2: list) -> None:
    alg = build_algorithm(FLParams(name, compat, weighting, server_lr=lr), 2)  # type: ignore[arg-type]
    got1, got2 = two_rounds(alg, r1={"seen": [3, 1]}, r2={"seen": [3, 1]})
    close(got1["x"], w1)
    close(got2["x"], w2)
    assert alg.rounds_done == 2


# ----------------------------------------------------------------- fedavgm


def test_fedavgm_paper() -> None:
    alg = build_algorithm(FLParams("fedavgm", beta1=0.5, server_lr=2.0), 2)
    w1, w2 = two_rounds(alg)
    # v1 = 0.5·0 − Δ1 = [-0.1, -0.175]; w1 = w0 − 2·v1 = [1.2, 2.35]
    close(w1["x"], [1.2, 2.35])
    # v2 = 0.5·v1 − Δ2 = [-0.05 - 0.2, -0.0875 - 0.05] = [-0.25, -0.1375]; w2 = w1 − 2·v2 = [1.7, 2.625]
    close(w2["x"], [1.7, 2.625])
    close(alg.state_dict()["momentum/x"], [0.25, 0.1375])  # stored as u = −v (the Δ direction)


def test_fedavgm_openfedllm() -> None:
    alg = build_algorithm(FLParams("fedavgm", "openfedllm", "uniform", beta1=0.5, server_lr=2.0), 2)
    w1, w2 = two_rounds(alg)
    # samples weighting forced, no server lr; first round proxy = Δ1 = [0.1, 0.175]; w1 = [1.1, 2.175]
    close(w1["x"], [1.1, 2.175])
    # proxy = 0.5·[0.1, 0.175] + 0.5·[0.2, 0.05] = [0.15, 0.1125]; w2 = [1.25, 2.2875]
    close(w2["x"], [1.25, 2.2875])
    close(alg.state_dict()["momentum/x"], [0.15, 0.1125])


# ----------------------------------------------------------------- fedadagrad / fedadam / fedyogi
# η = 0.1, τ = 0.1, β1 = 0.5, β2 = 0.75. paper uses the samples-weighted Δ, openfedllm the uniform one.

FEDOPT_CASES = [
    # paper Adagrad: m = Δ, v = Σ Δ².
    #  r1: v = [0.01, 0.030625], √v = |Δ| → w1 = [1 + 0.01/0.2, 2 + 0.0175/0.275] = [1.05, 2.0636363636...]
    #  r2: v = [0.05, 0.033125] → w2 = w1 + 0.1·[0.2/(0.2236068 + 0.1), 0.05/(0.1820027 + 0.1)]
    ("fedadagrad", "paper", False, [1.05, 2.0636363636363635], [1.1118033988749896, 2.081366687362204],
     [0.2, 0.05], [0.05, 0.033125]),
    # bias correction is ignored by Adagrad: same numbers.
    ("fedadagrad", "paper", True, [1.05, 2.0636363636363635], [1.1118033988749896, 2.081366687362204],
     [0.2, 0.05], [0.05, 0.033125]),
    # paper Adam: r1 m = 0.5·Δ1 = [0.05, 0.0875], v = 0.25·Δ1² = [0.0025, 0.00765625], √v = m
    #  → w1 = [1 + 0.1·0.05/0.15, 2 + 0.1·0.0875/0.1875] = [1.0333..., 2.04666...]
    #  r2 m = 0.5·m + 0.5·[0.2, 0.05] = [0.125, 0.06875]; v = 0.75·v + 0.25·[0.04, 0.0025] = [0.011875, 0.0063671875]
    #  → w2 = w1 + 0.1·m/(√v + 0.1) = w1 + [0.0598165, 0.0382381]
    ("fedadam", "paper", False, [1.0333333333333334, 2.046666666666667], [1.0931498239234456, 2.0849047325990964],
     [0.125, 0.06875], [0.011875, 0.0063671875]),
    # with bias correction: r1 m̂ = m/0.5 = Δ1, v̂ = v/0.25 = Δ1² → same step as Adagrad r1;
    #  r2 m̂ = m/0.75 = [0.1666..., 0.091666...], v̂ = v/0.4375 = [0.0271428..., 0.0145536...]
    ("fedadam", "paper", True, [1.05, 2.0636363636363635], [1.1129522582593165, 2.10518251173388],
     [0.125, 0.06875], [0.011875, 0.0063671875]),
    # paper Yogi from v0 = 0: r1 v = 0 − 0.25·Δ1²·sign(−Δ1²) = 0.25·Δ1² (= Adam r1);
    #  r2 Δ2² = [0.04, 0.0025], v − Δ2² = [−, +] → v = [0.0025 + 0.01, 0.00765625 − 0.000625] = [0.0125, 0.00703125]
    ("fedyogi", "paper", False, [1.0333333333333334, 2.046666666666667], [1.0923503277082809, 2.0840607633574746],
     [0.125, 0.06875], [0.0125, 0.00703125]),
    #  bias corrected r2: v̂ = v/0.4375 = [0.0285714..., 0.0160714...]
    ("fedyogi", "paper", True, [1.05, 2.0636363636363635], [1.111950763669221, 2.1040585526974294],
     [0.125, 0.06875], [0.0125, 0.00703125]),
    # openfedllm Adagrad (uniform Δ, v0 = τ² = 0.01): r1 m = [0.2, 0.05], v = 0.01 + m² = [0.05, 0.0125]
    #  → w1 = [1 + 0.02/(0.2236068 + 0.1), 2 + 0.005/(0.1118034 + 0.1)];
    #  r2 m = [0, 0.1], v = [0.05, 0.0225] → w2 = w1 + [0, 0.01/0.25]
    ("fedadagrad", "openfedllm", False, [1.0618033988749895, 2.023606797749979],
     [1.0618033988749895, 2.063606797749979], [0.0, 0.1], [0.05, 0.0225]),
    # openfedllm Adam: r1 m = Δ1 = [0.2, 0.05] (first round), v = 0.75·0.01 + 0.25·m² = [0.0175, 0.008125];
    #  r2 m = 0.5·m + 0.5·[0, 0.1] = [0.1, 0.075], v = 0.75·v + 0.25·m² = [0.015625, 0.0075] → √v1 = 0.125
    #  (bias_correction=True is ignored in compat mode)
    ("fedadam", "openfedllm", True, [1.086100174808612, 2.026296581635734], [1.1305446192530566, 2.0664889605004024],
     [0.1, 0.075], [0.015625, 0.0075]),
    # openfedllm Yogi: r1 m = [0.2, 0.05], m² = [0.04, 0.0025], sign(0.01 − m²) = [−, +]
    #  → v = [0.01 + 0.01, 0.01 − 0.000625] = [0.02, 0.009375];
    #  r2 m = [0.1, 0.075], m² = [0.01, 0.005625], sign(v − m²) = [+, +] → v = [0.0175, 0.00796875]
    ("fedyogi", "openfedllm", False, [1.082842712474619, 2.0254033307585164], [1.125892799878925, 2.0650297109796156],
     [0.1, 0.075], [0.0175, 0.00796875]),
]


@pytest.mark.parametrize(("name", "compat", "bc", "w1", "w2", "m2", "v2"), FEDOPT_CASES)
def test_fedopt(name: str, compat: str, bc: bool, w1: list, w2: list, m2: list, v2: list) -> None:
    p = FLParams(name, compat, server_lr=0.1, tau=0.1, beta1=0.5, beta2=0.75, bias_correction=bc)  # type: ignore[arg-type]
    alg = build_algorithm(p, 2)
    got1, got2 = two_rounds(alg)
    close(got1["x"], w1)
    close(got2["x"], w2)
    sd = alg.state_dict()
    close(sd["m/x"], m2)
    close(sd["v/x"], v2)
    assert sd["rounds_done"] == 2


def test_fedopt_defaults_and_lazy_moments() -> None:
    alg = build_algorithm(FLParams("fedadam"), 2)
    assert alg.server_lr == 1e-3 and alg.params.tau == 1e-3 and alg.params.beta1 == 0.9 and alg.params.beta2 == 0.99
    assert alg.state_dict() == {"rounds_done": 0}  # moments appear at the first aggregate
    alg.aggregate(W0, updates(ROUND1))
    assert set(alg.state_dict()) == {"rounds_done", "m/x", "v/x"}


# ----------------------------------------------------------------- scaffold server


@pytest.mark.parametrize(
    ("compat", "weighting", "w1", "w2"),
    [
        # paper honours the configured weighting (uniform): w1 = [1.2, 2.05], w2 = w1 + [0, 0.1]
        ("paper", "uniform", [1.2, 2.05], [1.2, 2.15]),
        # openfedllm always weights by samples: w1 = [1.1, 2.175], w2 = [1.3, 2.225]
        ("openfedllm", "uniform", [1.1, 2.175], [1.3, 2.225]),
    ],
)
def test_scaffold_server_divides_by_total_clients(compat: str, weighting: str, w1: list, w2: list) -> None:
    alg = build_algorithm(FLParams("scaffold", compat, weighting), num_clients=4)  # type: ignore[arg-type]
    got1 = alg.aggregate(W0, updates(ROUND1, control=[[0.4, -0.8], [0.8, 0.4]]))
    # c = 0 + ([0.4, -0.8] + [0.8, 0.4]) / N = [1.2, -0.4] / 4 = [0.3, -0.1]  (dividing by |S| = 2 would give [0.6, -0.2])
    close(alg.state_dict()["c/x"], [0.3, -0.1])
    got2 = alg.aggregate(got1, updates(ROUND2, control=[[0.4, 0.4], [0.0, 0.0]]))
    # c = [0.3, -0.1] + [0.4, 0.4] / 4 = [0.4, 0.0]
    close(alg.state_dict()["c/x"], [0.4, 0.0])
    close(got1["x"], w1)
    close(got2["x"], w2)


def test_scaffold_server_needs_control_delta() -> None:
    alg = build_algorithm(FLParams("scaffold"), 2)
    with pytest.raises(ValueError, match="control_delta"):
        alg.aggregate(W0, updates(ROUND1))


# ----------------------------------------------------------------- client hooks


def test_fedprox_loss_term_and_gradient() -> None:
    w = {"x": t(1.0, 2.0), "frozen": t(0.0)}
    hooks = build_algorithm(FLParams("fedprox", mu=0.2), 2).client_hooks(w, None)
    w["x"].add_(100.0)  # the hook keeps its own detached copy of w
    theta = torch.nn.Parameter(t(1.5, 1.0))
    frozen = torch.nn.Parameter(t(7.0), requires_grad=False)
    term = hooks.loss_term({"x": theta, "frozen": frozen})
    # μ/2·‖θ − w‖² = 0.1·(0.5² + (−1)²) = 0.125; the frozen parameter does not count
    assert term is not None
    assert math.isclose(term.item(), 0.125, abs_tol=1e-15)
    term.backward()
    # ∂/∂θ = μ(θ − w) = 0.2·[0.5, −1] = [0.1, −0.2]
    close(theta.grad, [0.1, -0.2])


def scaffold_hooks(compat: str):
    """Hooks with server c = [0.3, -0.1] and client c_i = [0.1, 0.1]; so c − c_i = [0.2, -0.2]."""
    alg = build_algorithm(FLParams("scaffold", compat), 4)  # type: ignore[arg-type]
    alg.load_state_dict({"rounds_done": 1, "c/x": t(0.3, -0.1)})
    return alg.client_hooks({"x": t(1.0, 2.0)}, {"x": t(0.1, 0.1)})


def test_scaffold_before_step_corrects_gradient_in_paper_mode() -> None:
    hooks = scaffold_hooks("paper")
    theta = torch.nn.Parameter(t(1.0, 2.0))
    no_grad = torch.nn.Parameter(t(5.0, 5.0))
    (theta**2).sum().backward()  # g = 2θ = [2, 4]
    opt = torch.optim.SGD([theta, no_grad], lr=0.1)
    params = {"x": theta}
    hooks.before_step(params, 0.1)
    close(theta.grad, [2.2, 3.8])  # g + (c − c_i)
    opt.step()
    close(theta.detach(), [0.78, 1.62])  # θ − 0.1·[2.2, 3.8]
    hooks.after_step(params, 0.1)  # no-op in paper mode
    close(theta.detach(), [0.78, 1.62])
    # a parameter that got no gradient still receives the correction
    hooks2 = scaffold_hooks("paper")
    hooks2.before_step({"x": no_grad}, 0.1)
    close(no_grad.grad, [0.2, -0.2])


def test_scaffold_after_step_corrects_params_in_openfedllm_mode() -> None:
    hooks = scaffold_hooks("openfedllm")
    theta = torch.nn.Parameter(t(1.0, 2.0))
    theta.grad = t(2.0, 4.0)
    hooks.before_step({"x": theta}, 0.5)
    close(theta.grad, [2.0, 4.0])  # gradient untouched
    hooks.after_step({"x": theta}, 0.5)
    close(theta.detach(), [0.9, 2.1])  # θ − 0.5·[0.2, −0.2]


@pytest.mark.parametrize("compat", COMPATS)
def test_scaffold_finish_control_variate(compat: str) -> None:
    hooks = scaffold_hooks(compat)
    # w = [1, 2], w_i = [0.8, 2.4], K = 4, η_l = 0.05 → (w − w_i)/(K·η_l) = [0.2, -0.4]/0.2 = [1, -2]
    # c_i⁺ = c_i − c + [1, -2] = [0.1 − 0.3 + 1, 0.1 + 0.1 − 2] = [0.8, -1.8]; Δc_i = c_i⁺ − c_i = [0.7, -1.9]
    extras, new_state = hooks.finish({"x": t(0.8, 2.4)}, num_steps=4, lr=0.05)
    assert new_state is not None
    close(new_state["x"], [0.8, -1.8])
    close(extras["control_delta"]["x"], [0.7, -1.9])
    with pytest.raises(ValueError, match="K·η_l"):
        hooks.finish({"x": t(0.8, 2.4)}, num_steps=0, lr=0.05)


def test_scaffold_hooks_before_any_aggregate_start_from_zero() -> None:
    alg = build_algorithm(FLParams("scaffold"), 3)
    hooks = alg.client_hooks(W0, None)
    close(alg.state_dict()["c/x"], [0.0, 0.0])  # c initialised at the first client_hooks
    theta = torch.nn.Parameter(t(1.0, 2.0))
    theta.grad = t(2.0, 4.0)
    hooks.before_step({"x": theta}, 0.1)
    close(theta.grad, [2.0, 4.0])
    # c_i⁺ = 0 − 0 + ([1, 2] − [0.5, 2.5])/(2·0.25) = [1, -1]
    _, c_i = hooks.finish({"x": t(0.5, 2.5)}, num_steps=2, lr=0.25)
    assert c_i is not None
    close(c_i["x"], [1.0, -1.0])


# ----------------------------------------------------------------- conformance table


def simulate_round(
    alg: Algorithm, w: State, deltas: list[State], samples: list[int], client_states: dict[str, State]
) -> State:
    """Run the client half (hooks.finish) and the server half for one round, as the engine would."""
    ups = []
    for i, (delta, n) in enumerate(zip(deltas, samples)):
        cid = f"c{i}"
        hooks = alg.client_hooks(w, client_states.get(cid))
        local = S.add(hooks.start(w), delta)
        extras, st = hooks.finish(local, 3, 0.1)
        if st is not None:
            client_states[cid] = st
        result = hooks.result(local)
        sent = S.sub(result, {k: w[k] for k in result})
        ups.append(ClientUpdate(cid, sent, n, num_seen=n, num_steps=3, lr=0.1, extras=extras))
    if alg.single_client:
        ups = ups[:1]
    return alg.aggregate(w, ups)


def random_state(gen: torch.Generator) -> State:
    return {"m.lora_A.weight": torch.randn(2, 2, generator=gen), "m.lora_B.weight": torch.randn(3, generator=gen)}


ALL = [(name, compat) for name in sorted(ALGORITHMS) for compat in COMPATS]


def test_every_algorithm_is_registered() -> None:
    expected = {"local", "fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedyogi", "fedadam",
                "ditto", "pfedme", "fedsa"}
    assert set(ALGORITHMS) == expected


@pytest.mark.parametrize(("name", "compat"), ALL)
def test_zero_deltas_leave_w_unchanged(name: str, compat: str) -> None:
    alg = build_algorithm(FLParams(name, compat, bias_correction=True), 5)  # type: ignore[arg-type]
    w = random_state(torch.Generator().manual_seed(0))
    zero = S.zeros_like(w)
    out, states = w, {}
    for _ in range(2):
        out = simulate_round(alg, out, [zero] * 3, [4, 4, 4], states)
        assert all(torch.equal(out[k], w[k]) for k in w)


@pytest.mark.parametrize("compat", COMPATS)
@pytest.mark.parametrize("name", ["fedavg", "fedprox", "scaffold", "local"])
def test_one_client_gives_w_plus_delta(name: str, compat: str) -> None:
    alg = build_algorithm(FLParams(name, compat), 1)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(1)
    w, delta = random_state(gen), random_state(gen)
    out = simulate_round(alg, w, [delta], [7], {})
    assert all(torch.equal(out[k], w[k] + delta[k]) for k in w)


@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize(("name", "compat"), ALL)
def test_state_dict_round_trip_continues_bit_identically(name: str, compat: str, bias_correction: bool) -> None:
    p = FLParams(name, compat, beta1=0.5, bias_correction=bias_correction)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(2)
    w = random_state(gen)
    rounds = [[S.scale(random_state(gen), 0.1) for _ in range(3)] for _ in range(3)]
    samples = [3, 1, 5]

    original, states = build_algorithm(p, 4), {}
    w = simulate_round(original, w, rounds[0], samples, states)
    saved, saved_states = original.state_dict(), {c: S.clone(s) for c, s in states.items()}

    resumed = build_algorithm(p, 4)
    resumed.load_state_dict(saved)
    for v in saved.values():  # the algorithm must not alias the checkpoint it was given
        if isinstance(v, torch.Tensor):
            v.add_(1.0)
    w_a = w_b = w
    for deltas in rounds[1:]:
        w_a = simulate_round(original, w_a, deltas, samples, states)
        w_b = simulate_round(resumed, w_b, deltas, samples, saved_states)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w)
    sa, sb = original.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys() and sa["rounds_done"] == 3
    assert all(torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa)


def test_unknown_algorithm_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'") as err:
        build_algorithm(FLParams("fedsgd"), 2)
    assert "fedadam, fedavg, fedavgm, fedprox, fedsa, fedyogi, local, pfedme, scaffold" in str(err.value)


def test_registering_duplicate_or_bad_name_raises() -> None:
    before = dict(ALGORITHMS)

    class Dummy(Algorithm):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register_algorithm("fedavg")(Dummy)
    with pytest.raises(ValueError, match="lower-case"):
        register_algorithm("FedDummy")(Dummy)
    assert ALGORITHMS == before
