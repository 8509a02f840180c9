"""The composable server: presets as parts, swapped parts, validation drops, v0, ignored settings and
the local optimizers. (Each FedLLM-Bench method's numbers are in test_fl_algorithms.py.)"""

from __future__ import annotations

import pytest
import torch

from fedllm.config import build_config
from fedllm.fl import ALGORITHMS, ClientUpdate, FLParams, build_algorithm, ignored_params
from fedllm.fl import state as S


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


W0 = {"x": t(1.0, 2.0)}
ROUND1 = [ClientUpdate("a", {"x": t(0.4, -0.2)}, 1), ClientUpdate("b", {"x": t(0.0, 0.3)}, 3)]


@pytest.mark.parametrize(("name", "aggregator", "optimizer", "method"), [
    ("local", "single", "sgd", "plain"), ("fedavg", "mean", "sgd", "plain"), ("fedprox", "mean", "sgd", "fedprox"),
    ("scaffold", "mean", "sgd", "scaffold"), ("fedavgm", "mean", "momentum", "plain"),
    ("fedadagrad", "mean", "adagrad", "plain"), ("fedadam", "mean", "adam", "plain"), ("fedyogi", "mean", "yogi", "plain"),
])
def test_the_eight_methods_are_presets_of_parts(name, aggregator, optimizer, method):
    alg = build_algorithm(FLParams(name), 4)
    assert (alg.aggregator.name, alg.optimizer.name, alg.method.name) == (aggregator, optimizer, method)
    assert set(ALGORITHMS) == {"local", "fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedadam", "fedyogi",
                               "ditto", "pfedme", "fedsa"}


def test_a_part_can_be_swapped():
    alg = build_algorithm(FLParams("scaffold", server_optimizer="adam", aggregator={"name": "trimmed_mean", "trim_ratio": 0.25}), 4)
    assert (alg.aggregator.name, alg.optimizer.name, alg.method.name) == ("trimmed_mean", "adam", "scaffold")
    assert alg.server_lr == 1e-3  # the adaptive optimizer's default η
    assert alg.describe()["aggregator"] == {"name": "trimmed_mean", "trim_ratio": 0.25}
    with pytest.raises(ValueError, match="fl.aggregator does not apply to 'local'"):
        FLParams("local", aggregator="median")
    with pytest.raises(ValueError, match="unknown server optimizer 'adamw'; known: adagrad, adam, momentum, sgd, yogi"):
        FLParams("fedavg", server_optimizer="adamw")


def test_validation_drops_bad_updates_with_reasons_and_keeps_the_rest():
    alg = build_algorithm(FLParams("fedavg", max_update_norm=1.0), 4)
    ups = [
        ClientUpdate("ok", {"x": t(0.4, -0.2)}, 1),
        ClientUpdate("nan", {"x": t(float("nan"), 0.0)}, 1),
        ClientUpdate("inf", {"x": t(0.0, float("-inf"))}, 1),
        ClientUpdate("shape", {"x": t(1.0, 2.0, 3.0)}, 1),
        ClientUpdate("keys", {"y": t(1.0, 2.0)}, 1),
        ClientUpdate("big", {"x": t(3.0, 4.0)}, 1),  # norm 5
        ClientUpdate("count", {"x": t(0.1, 0.1)}, -2),
        ClientUpdate("ok2", {"x": t(0.0, 0.3)}, 3),
    ]
    out = alg.step(W0, ups)
    reasons = dict(out.dropped)
    assert out.accepted == ["ok", "ok2"] and out.skipped is None
    assert reasons["nan"] == "update[x] has 1 non-finite value(s)" and "non-finite" in reasons["inf"]
    assert reasons["shape"] == "update[x] has shape (3,), the adapter (2,)"
    assert reasons["keys"].startswith("update keys differ from the adapter's: missing ['x']")
    assert reasons["big"] == "update norm 5 exceeds fl.max_update_norm=1"
    assert reasons["count"] == "num_samples = -2 is not a count"
    # the survivors aggregate as if alone: 0.25·[0.4, −0.2] + 0.75·[0, 0.3] = [0.1, 0.175]
    torch.testing.assert_close(out.state["x"], t(1.1, 2.175), rtol=0, atol=1e-12)
    assert alg.rounds_done == 1


def test_a_round_without_survivors_changes_nothing():
    alg = build_algorithm(FLParams("fedadam"), 2)
    before = alg.state_dict()
    out = alg.step(W0, [ClientUpdate("a", {"x": t(float("nan"), 0.0)}, 1)])
    assert out.state is None and out.skipped == "no client update survived validation"
    assert alg.state_dict() == before and alg.rounds_done == 0
    with pytest.raises(ValueError, match="round skipped: no client update survived validation .*a: update.*non-finite"):
        alg.aggregate(W0, [ClientUpdate("a", {"x": t(float("nan"), 0.0)}, 1)])


def test_a_server_step_that_would_overflow_is_rolled_back():
    alg = build_algorithm(FLParams("fedavg", server_lr=1e308), 2)
    w = {"x": t(1e308, 0.0)}
    out = alg.step(w, [ClientUpdate("a", {"x": t(1e308, 0.0)}, 1)])
    assert out.state is None and out.skipped == "the server step gave non-finite values" and alg.rounds_done == 0


def test_scaffold_payload_is_required():
    alg = build_algorithm(FLParams("scaffold"), 2)
    out = alg.step(W0, ROUND1)
    assert out.state is None and dict(out.dropped) == {"a": "missing payload 'control_delta'", "b": "missing payload 'control_delta'"}


@pytest.mark.parametrize(("compat", "v0", "w1"), [
    # paper Adam (η = τ = 0.1, β1 = 0.5, β2 = 0.75), samples-weighted Δ1 = [0.1, 0.175], v₀ = τ² = 0.01:
    #  m = 0.5·Δ1 = [0.05, 0.0875]; v = 0.75·0.01 + 0.25·Δ1² = [0.01, 0.01515625]
    #  w1 = [1 + 0.1·0.05/(0.1 + 0.1), 2 + 0.1·0.0875/(0.1231107 + 0.1)] = [1.025, 2.0392182]
    ("paper", "tau2", [1.025, 2.0392181957956748]),
    # the paper default v₀ = 0: v = 0.25·Δ1², √v = m → w1 = [1 + 0.005/0.15, 2 + 0.00875/0.1875]
    ("paper", None, [1.0333333333333334, 2.046666666666667]),
    # openfedllm Adam with v₀ = 0 instead of its τ²: m = uniform Δ1 = [0.2, 0.05], v = 0.25·m² = [0.01, 0.000625]
    #  w1 = [1 + 0.1·0.2/(0.1 + 0.1), 2 + 0.1·0.05/(0.025 + 0.1)] = [1.1, 2.04]
    ("openfedllm", "zero", [1.1, 2.04]),
])
def test_initial_second_moment(compat, v0, w1):
    alg = build_algorithm(FLParams("fedadam", compat, server_lr=0.1, tau=0.1, beta1=0.5, beta2=0.75, v0=v0), 2)
    got = alg.aggregate(W0, ROUND1)
    torch.testing.assert_close(got["x"], t(*w1), rtol=0, atol=1e-12)
    assert alg.optimizer.v0() == (v0 or {"paper": "zero", "openfedllm": "tau2"}[compat])


@pytest.mark.parametrize(("params", "expected"), [
    (FLParams("fedadam", mu=0.05), ["fl.mu=0.05 is ignored by fedadam"]),
    (FLParams("fedprox", mu=0.05), []),
    (FLParams("local", server_lr=2.0, weighting="uniform"), ["fl.weighting=uniform is ignored by local",
                                                            "fl.server_lr=2.0 is ignored by local"]),
    (FLParams("fedavg", "openfedllm", weighting="uniform"), ["fl.weighting=uniform is ignored by fedavg (compat: openfedllm)"]),
    (FLParams("fedadagrad", beta1=0.5, bias_correction=True), ["fl.beta1=0.5 is ignored by fedadagrad",
                                                              "fl.bias_correction=True is ignored by fedadagrad"]),
    (FLParams("fedavgm", "openfedllm", server_lr=0.5), ["fl.server_lr=0.5 is ignored by fedavgm (compat: openfedllm)"]),
    (FLParams("fedavg", aggregator="median", weighting="seen"), ["fl.weighting=seen is ignored by fedavg"]),
    (FLParams("fedavg", v0="tau2"), ["fl.v0=tau2 is ignored by fedavg"]),
    (FLParams("fedyogi", v0="tau2", beta2=0.9), []),
])
def test_settings_the_method_ignores_are_reported(params, expected):
    assert sorted(ignored_params(params)) == sorted(expected)


def test_state_dict_keeps_its_old_keys():
    """Checkpoints written before the parts were separated load into the composed server."""
    alg = build_algorithm(FLParams("scaffold"), 2)
    alg.load_state_dict({"rounds_done": 3, "c/x": t(0.5, 0.5)})
    assert alg.rounds_done == 3 and torch.equal(alg.client_payload(W0)["c"]["x"], t(0.5, 0.5))
    adam = build_algorithm(FLParams("fedadam"), 2)
    adam.aggregate(W0, ROUND1)
    assert set(adam.state_dict()) == {"rounds_done", "m/x", "v/x"}


# ----------------------------------------------------------------- local optimizers


@pytest.mark.parametrize("optimizer", ["sgd", "sgdm", "adamw"])
def test_local_optimizer(optimizer):
    from fedllm.data.formatting import get_template
    from fedllm.models.adapters import AdapterSlot, attach_adapter
    from fedllm.models.precision import Precision
    from fedllm.models.tiny import build_tiny_model, build_tiny_tokenizer
    from fedllm.train.local import LocalTrainer
    from fedllm.train.objectives import get_objective
    from fedllm.train.task import Task
    from tests.conftest import synthetic_federation

    tok = build_tiny_tokenizer()
    slot = AdapterSlot(attach_adapter(build_tiny_model(tok), build_config({"lora": {"r": 4, "alpha": 8, "dropout": 0.0}})))
    task = Task(get_objective("sft"), get_template("chat", tok), tok, 64)
    feats = task.encode(synthetic_federation()["user0"].train[:2]).features
    w = slot.initial_state(seed=1)
    w = {k: v + 0.01 for k, v in w.items()}  # B ≠ 0, so A gets a gradient too
    lr = 0.1
    trainer = LocalTrainer(slot, task.objective, Precision("fp32", torch.device("cpu")), task.pad_id,
                           max_grad_norm=None, optimizer=optimizer, momentum=0.9)
    # the gradient at w, by hand: one backward of the same loss
    slot.load(w)
    batch = task.objective.collate(feats, task.pad_id)
    loss, units = task.objective.loss_sum(slot.model, batch)
    (loss / units).backward()
    grad = {k: p.grad.detach().clone() for k, p in slot.params.items()}
    slot.model.zero_grad(set_to_none=True)
    slot.load(w)
    res = trainer.train(feats, [[[0, 1]]], lr)
    if optimizer in ("sgd", "sgdm"):  # one step: θ − lr·g (momentum starts from zero, so the same)
        for k in w:
            torch.testing.assert_close(res.state[k], w[k] - lr * grad[k], rtol=1e-5, atol=1e-7)
    else:  # AdamW's first step moves every weight with a gradient by about lr
        moved = S.sub(res.state, w)
        k = next(k for k in grad if grad[k].abs().max() > 1e-6)
        assert torch.allclose(moved[k][grad[k].abs() > 1e-6].abs(), torch.tensor(lr), rtol=1e-2)
    assert type(trainer.make_optimizer(list(slot.params.values()), lr, 0.0, 0.9)).__name__ == \
        {"sgd": "SGD", "sgdm": "SGD", "adamw": "AdamW"}[optimizer]


def test_a_secure_step_from_the_mean_equals_the_step_from_the_updates():
    """Under secure aggregation the server gets Σ p_i Δ_i only; for mean-based methods the step from it is
    the step from the updates: FedAdam's m, v and the new adapter agree (p = 1/4, 3/4 by samples)."""
    plain, secure = build_algorithm(FLParams("fedadam"), 4), build_algorithm(FLParams("fedadam"), 4)
    ref = plain.step(W0, ROUND1)
    mean = {"x": 0.25 * ROUND1[0].delta["x"] + 0.75 * ROUND1[1].delta["x"]}  # [0.1, 0.175] by hand
    counts = [ClientUpdate(u.client_id, {}, u.num_samples) for u in ROUND1]
    got = secure.step_secure(W0, mean, counts)
    torch.testing.assert_close(got.state["x"], ref.state["x"], rtol=0, atol=1e-15)
    assert got.accepted == ["a", "b"] and got.weights == [0.25, 0.75] and secure.rounds_done == 1
    assert secure.state_dict().keys() == plain.state_dict().keys()
    bad = secure.step_secure(W0, {"x": t(float("nan"), 0.0)}, counts)
    assert bad.state is None and "non-finite" in bad.skipped and secure.rounds_done == 1


@pytest.mark.parametrize(("params", "words"), [
    (FLParams("scaffold"), "client method scaffold"),
    (FLParams("fedavg", aggregator="median"), "median aggregator needs every update"),
    (FLParams("fedavg", weighting="seen"), "known only after training"),
    (FLParams("fedavg", transforms=[{"name": "clip", "max_norm": 1.0, "where": "server"}]), "act on each update at the server"),
    (FLParams("fedavg", max_update_norm=2.0), "max_update_norm"),
    (FLParams("local"), "nothing to aggregate"),
])
def test_what_cannot_run_from_a_secure_sum_says_why(params, words):
    assert words in build_algorithm(params, 4).secure_sum_problem()


def test_mean_based_methods_can_run_from_a_secure_sum():
    for name in ("fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi"):
        assert build_algorithm(FLParams(name), 4).secure_sum_problem() is None
    assert build_algorithm(FLParams("fedavg", weighting="uniform"), 4).secure_sum_problem() is None
    clip_on_client = FLParams("fedavg", transforms=[{"name": "clip", "max_norm": 1.0}])  # runs before upload
    assert build_algorithm(clip_on_client, 4).secure_sum_problem() is None
