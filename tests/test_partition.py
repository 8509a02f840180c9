"""Splitters: determinism, coverage, the skew each one promises, reports, plots and parameter errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedllm.data.partition import SPLITTERS, Partition, apply_partition, get_splitter

NUM_LABELS = 8


def _items(n: int = 2000, seed: int = 0) -> list[dict[str, object]]:
    """A fixed synthetic set: 8 labels of unequal frequency, 23 users of unequal activity."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_LABELS, size=n, p=np.linspace(1, 3, NUM_LABELS) / np.linspace(1, 3, NUM_LABELS).sum())
    users = rng.zipf(1.6, size=n) % 23
    return [{"id": i, "label": f"cat{int(c)}", "user": f"u{int(u):02d}"} for i, (c, u) in enumerate(zip(labels, users))]


ITEMS = _items()

# name -> (params, whether the split is random)
CASES = {
    "natural": ({"key": "user", "min_samples": 5}, False),
    "meta": ({"key": "label", "clients_per_value": 3}, True),
    "iid": ({"num_clients": 7}, True),
    "dirichlet": ({"num_clients": 8, "alpha": 0.5}, True),
    "shards": ({"num_clients": 20, "shards_per_client": 2}, True),
    "quantity": ({"num_clients": 8, "alpha": 0.5}, True),
}


def _split(name: str, seed: int = 0, items: list | None = None, **params) -> Partition:
    return get_splitter(name, **{**CASES[name][0], **params}).split(items or ITEMS, label="label", seed=seed)


def test_every_registered_splitter_is_tested() -> None:
    assert set(SPLITTERS) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_for_a_seed_and_changes_with_another(name: str) -> None:
    a, b = _split(name, seed=3), _split(name, seed=3)
    assert a.indices == b.indices and a.dropped == b.dropped
    assert a.seed == 3 and a.splitter == name and a.params == get_splitter(name, **CASES[name][0]).params()
    if CASES[name][1]:
        assert _split(name, seed=4).indices != a.indices
    else:
        assert _split(name, seed=4).indices == a.indices  # the natural split has no randomness


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_item_is_assigned_exactly_once_or_reported_dropped(name: str) -> None:
    p = _split(name, seed=1)
    assigned = [i for idx in p.indices.values() for i in idx]
    assert len(assigned) == len(set(assigned))
    assert sorted(assigned + list(p.dropped_indices)) == list(range(len(ITEMS)))
    assert sum(p.dropped.values()) == len(p.dropped_indices)
    assert all(idx == sorted(idx) for idx in p.indices.values())
    clients = apply_partition(p, ITEMS)
    assert list(clients) == p.client_ids
    assert all([it["id"] for it in clients[c]] == p.indices[c] for c in clients)
    report = p.report()
    assert all(r["size"] == sum(r["labels"].values()) == len(p.indices[c]) for c, r in report.items())


def test_iid_sizes_differ_by_at_most_one() -> None:
    for n, k in [(2000, 7), (2000, 8), (13, 5), (5, 5)]:
        p = get_splitter("iid", num_clients=k).split(list(range(n)), seed=0)
        sizes = list(p.sizes().values())
        assert len(sizes) == k and max(sizes) - min(sizes) <= 1 and sum(sizes) == n
        assert p.client_ids[0] == "client_0" and (n % k or p.summary()["size_gini"] == 0)


def test_smaller_alpha_gives_more_label_skew() -> None:
    tv = {a: _split("dirichlet", seed=0, alpha=a).summary()["mean_tv"] for a in (0.1, 1.0, 10.0)}
    assert tv[0.1] > tv[1.0] > tv[10.0]
    assert tv[0.1] > 0.4 and tv[10.0] < 0.2
    for seed in range(3):  # not a lucky seed
        assert _split("dirichlet", seed=seed, alpha=0.1).summary()["mean_tv"] > _split(
            "dirichlet", seed=seed, alpha=10.0
        ).summary()["mean_tv"]


def test_dirichlet_min_size_balance_and_retry_limit() -> None:
    p = _split("dirichlet", seed=0, alpha=0.1, min_size=50)
    assert min(p.sizes().values()) >= 50 and p.info["attempts"] >= 1
    balanced = _split("dirichlet", seed=0, alpha=0.5, balance=True)
    free = _split("dirichlet", seed=0, alpha=0.5)
    assert balanced.summary()["size_cv"] < free.summary()["size_cv"]
    with pytest.raises(ValueError, match=r"min_size=240 .*max_retries=3"):
        _split("dirichlet", alpha=0.05, min_size=240, max_retries=3)
    with pytest.raises(ValueError, match="num_clients=8 needs at least 8000 items"):
        _split("dirichlet", min_size=1000)


@pytest.mark.parametrize("num_clients", [4, 10, 37, 100])
def test_two_shards_per_client_give_at_most_two_labels(num_clients: int) -> None:
    p = _split("shards", seed=num_clients, num_clients=num_clients)
    assert p.summary()["max_labels_per_client"] <= 2
    assert all(len(r["labels"]) <= 2 for r in p.report().values())
    sizes = list(p.sizes().values())
    if num_clients >= 10:  # with many more shards than labels, shards are of near-equal size
        assert max(sizes) - min(sizes) <= 0.25 * np.mean(sizes)
    if num_clients >= NUM_LABELS:
        one = _split("shards", seed=0, num_clients=num_clients, shards_per_client=1)
        assert one.summary()["max_labels_per_client"] == 1


def test_shards_like_shepherd_may_straddle_labels() -> None:
    p = _split("shards", seed=0, num_clients=30, cut_at_labels=False)
    sizes = list(p.sizes().values())
    assert max(sizes) - min(sizes) <= 2  # equal cuts of the sorted list
    assert 2 < p.summary()["max_labels_per_client"] <= 4
    with pytest.raises(ValueError, match="8 labels need at least as many shards"):
        _split("shards", num_clients=3, shards_per_client=2)
    with pytest.raises(ValueError, match="shards exceed the 2000 items"):
        _split("shards", num_clients=1001)


def test_meta_information_gives_the_right_client_per_category() -> None:
    p = get_splitter("meta", key="label", clients_per_value=3).split(ITEMS, seed=0)
    assert len(p.client_ids) == 3 * NUM_LABELS
    for cid, idx in p.indices.items():
        assert {ITEMS[i]["label"] for i in idx} == {cid.rsplit("_", 1)[0]}
    for c in range(NUM_LABELS):
        sizes = [len(p.indices[f"cat{c}_{j}"]) for j in range(3)]
        assert max(sizes) - min(sizes) <= 1
    assert p.summary()["max_labels_per_client"] == 1  # the key is the report label by default
    per = {f"cat{c}": 1 + c % 2 for c in range(NUM_LABELS)}
    q = get_splitter("meta", key=lambda it: it["label"], clients_per_value=per).split(ITEMS, seed=0)
    assert q.client_ids[:3] == ["cat0", "cat1_0", "cat1_1"]
    with pytest.raises(ValueError, match=r"no entry for key value\(s\) \['cat7'\]"):
        get_splitter("meta", key="label", clients_per_value={f"cat{c}": 1 for c in range(7)}).split(ITEMS)
    with pytest.raises(ValueError, match=r"clients_per_value\['cat0'\] must be an integer >= 1"):
        get_splitter("meta", key="label", clients_per_value={"cat0": 0})


def test_quantity_skew_has_skewed_sizes_but_global_label_mix() -> None:
    q = _split("quantity", seed=0, alpha=0.5).summary()
    iid = _split("iid", seed=0, num_clients=8).summary()
    dirichlet = _split("dirichlet", seed=0, alpha=0.5).summary()
    assert q["size_cv"] > 0.5 and q["size_gini"] > 0.3 and iid["size_cv"] < 0.01
    assert q["weighted_tv"] < 0.1 < dirichlet["weighted_tv"]
    assert q["max_labels_per_client"] == NUM_LABELS
    more = _split("quantity", seed=0, alpha=0.1, min_size=0).summary()
    fewer = _split("quantity", seed=0, alpha=100.0).summary()
    assert more["size_gini"] > fewer["size_gini"] and fewer["size_cv"] < 0.2


def test_natural_key_with_min_samples_drops_and_reports() -> None:
    items = [{"user": u, "label": "x"} for u, n in [("b", 5), ("a", 2), (None, 3), ("c", 1)] for _ in range(n)]
    p = get_splitter("natural", key="user", min_samples=2).split(items)
    assert p.client_ids == ["a", "b"] and p.sizes() == {"a": 2, "b": 5}
    assert p.dropped == {"missing_key": 3, "below_min_samples": 1}
    assert p.info["dropped_clients"] == {"c": 1}
    assert p.summary()["num_dropped"] == 4 and p.summary()["num_assigned"] == 7
    assert set(apply_partition(p, items)) == {"a", "b"}
    everyone = get_splitter("natural", key="user").split(items)
    assert everyone.dropped == {"missing_key": 3} and len(everyone.client_ids) == 3


def test_label_as_attribute_or_callable() -> None:
    @dataclass
    class Rec:
        category: str

    recs = [Rec(f"c{i % 4}") for i in range(100)]
    by_attr = get_splitter("shards", num_clients=5).split(recs, label="category", seed=2)
    by_call = get_splitter("shards", num_clients=5).split(recs, label=lambda r: r.category, seed=2)
    assert by_attr.indices == by_call.indices
    assert by_attr.label_names() == ["c0", "c1", "c2", "c3"]


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, r"unknown splitter 'nope'; known: dirichlet, iid, meta, natural, quantity, shards"),
        ("iid", {"num_clients": 4, "alpha": 1}, r"has no parameter\(s\) \['alpha'\]"),
        ("iid", {}, r"needs parameter\(s\) \['num_clients'\]"),
        ("iid", {"num_clients": 0}, "num_clients must be an integer >= 1, got 0"),
        ("iid", {"num_clients": 2.5}, "num_clients must be an integer"),
        ("iid", {"num_clients": True}, "num_clients must be an integer"),
        ("dirichlet", {"num_clients": 4, "alpha": 0}, "alpha must be a finite number > 0, got 0"),
        ("dirichlet", {"num_clients": 4, "alpha": math.nan}, "alpha must be a finite number > 0"),
        ("dirichlet", {"num_clients": 4, "alpha": "1"}, "alpha must be a finite number > 0"),
        ("dirichlet", {"num_clients": 4, "min_size": -1}, "min_size must be an integer >= 0"),
        ("dirichlet", {"num_clients": 4, "max_retries": 0}, "max_retries must be an integer >= 1"),
        ("dirichlet", {"num_clients": 4, "balance": "yes"}, "balance must be True or False"),
        ("quantity", {"num_clients": 4, "alpha": -1.0}, "alpha must be a finite number > 0"),
        ("shards", {"num_clients": 4, "shards_per_client": 0}, "shards_per_client must be an integer >= 1"),
        ("natural", {"key": 3}, "key must be a field name or a callable"),
        ("natural", {"key": "user", "min_samples": 0}, "min_samples must be an integer >= 1"),
        ("meta", {"key": "label", "clients_per_value": 0}, "clients_per_value must be an integer >= 1"),
    ],
)
def test_bad_parameters_raise_clear_errors(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_splitter(name, **params)


def test_bad_split_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="dirichlet: this splitter needs label="):
        get_splitter("dirichlet", num_clients=2).split(ITEMS)
    with pytest.raises(ValueError, match="label='topic': item 0 has no field 'topic'"):
        get_splitter("shards", num_clients=2).split(ITEMS, label="topic")
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        get_splitter("iid", num_clients=2).split(ITEMS, seed=-1)
    with pytest.raises(ValueError, match="num_clients=5 needs at least 5 items, got 3"):
        get_splitter("iid", num_clients=5).split([1, 2, 3])
    with pytest.raises(ValueError, match="clients_per_value=4 for 'a' exceeds its 2 items"):
        get_splitter("meta", key="k", clients_per_value=4).split([{"k": "a"}, {"k": "a"}])
    with pytest.raises(ValueError, match="partition is of 2000 items, got 3"):
        apply_partition(_split("iid"), [1, 2, 3])


def test_summary_and_to_dict_are_json_friendly() -> None:
    import json

    p = _split("dirichlet", seed=0, alpha=0.3)
    s = p.summary()
    for key in ("size_cv", "size_gini", "mean_tv", "weighted_tv", "max_tv", "max_labels_per_client"):
        assert key in s
    assert 0 <= s["mean_tv"] <= 1 and s["num_labels"] == NUM_LABELS and s["num_assigned"] == len(ITEMS)
    assert json.loads(json.dumps(p.to_dict()))["params"]["alpha"] == 0.3
    unlabeled = get_splitter("iid", num_clients=3).split(list(range(10)))
    assert "mean_tv" not in unlabeled.summary() and unlabeled.report()["client_0"]["labels"] == {}
    callable_key = get_splitter("natural", key=lambda it: it["user"]).params()
    assert callable_key["key"].startswith("<callable ")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from matplotlib.image import imread

    path = _split("shards", seed=0).plot(tmp_path / "shards.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).shape[0] > 100  # 20 clients: taller than the minimum
    bare = get_splitter("iid", num_clients=3).split(list(range(10))).plot(tmp_path / "bare.png")  # no labels
    assert bare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.png", "shards.png"]  # no temp files left
