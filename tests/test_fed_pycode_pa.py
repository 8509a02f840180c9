"""Fed-PyCode-PA: preference pairs derived from Fed-PyCode, built from tiny fake distributions."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fedllm.data.fedllm_bench import read_fedllm_bench
from fedllm.data.schema import DataError, PreferenceSample
from fedllm.data.sources import SOURCES, fed_pycode_pa, get_source, load_dataset
from fedllm.data.sources.fed_pycode import FedPyCode
from fedllm.data.sources.fed_pycode_pa import pair_client
from tests.conftest import make_dist


def _fn(name: str, i: int, extra: int = 0) -> str:
    """A public, documented, non-trivial function unique by `i`; `extra` lines make it longer."""
    more = "".join(f"\n    total += {i} * {m} - {m}" for m in range(extra))
    return textwrap.dedent(
        f'''
        def {name}(x: int, y: int = {i}) -> int:
            """Combine x and y with the offset number {i} and return the sum."""
            total = x + y
            for k in range({i}):
                total += k * {i}'''
    ) + more + "\n    return total\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    # alpha: 8 short functions and 2 about 3x longer ones (whose only length-matched partner is each other)
    make_dist(site, "alpha", "1.0", {
        "alpha/core.py": "".join(_fn(f"alpha_fn_{i}", i) for i in range(8))
        + _fn("alpha_long_a", 50, extra=22) + _fn("alpha_long_b", 51, extra=24),
    })
    make_dist(site, "Beta_Pkg", "2.0", {"beta_pkg/mod.py": "".join(_fn(f"beta_fn_{i}", 100 + i) for i in range(5))})
    make_dist(site, "gamma", "0.1", {"gamma.py": _fn("gamma_fn", 500)})  # one sample: nothing to pair it with
    return site


def _opts(site: Path, **kw: Any) -> dict[str, Any]:
    return {"distributions": ["alpha", "beta-pkg", "gamma"], "min_samples": 1, "workers": 1,
            "search_path": [site], "progress": False, **kw}


def _name(code: str) -> str:
    return re.search(r"def (\w+)\(", code).group(1)  # type: ignore[union-attr]


def _build(site: Path, cache: Path, **kw: Any) -> Path:
    return get_source("fed-pycode-pa").build(cache, **_opts(site, **kw))


def test_pairs_are_real_and_hard(site: Path, tmp_path: Path) -> None:
    path = _build(site, tmp_path)
    assert path.parent.parent == tmp_path / "datasets" / "fed-pycode-pa"
    manifest = json.loads((path.parent / "manifest.json").read_text())
    upstream = read_fedllm_bench(manifest["fed_pycode"]["data_file"])
    assert Path(manifest["fed_pycode"]["data_file"]).parent.parent == tmp_path / "datasets" / "fed-pycode"
    pairs = read_fedllm_bench(path)
    assert list(pairs) == ["alpha", "beta-pkg"]  # gamma's single sample has no partner
    for cid, samples in pairs.items():
        real = {s.instruction: s.response for s in upstream[cid]}
        assert len(samples) == len(real)
        for p in samples:
            assert isinstance(p, PreferenceSample) and len(p.prompt) == 1 and p.prompt[0].role == "user"
            assert p.chosen == real[p.instruction]  # chosen: the prompt's own implementation
            assert p.rejected in real.values() and p.rejected != p.chosen  # another function of this client
            assert _name(p.rejected) != _name(p.chosen) == _name(p.instruction)
            assert max(len(p.chosen), len(p.rejected)) <= 2 * min(len(p.chosen), len(p.rejected))
        # a permutation: every implementation is rejected exactly once
        assert sorted(p.rejected for p in samples) == sorted(p.chosen for p in samples)
    longs = {_name(p.chosen): _name(p.rejected) for p in pairs["alpha"] if "long" in _name(p.chosen)}
    assert longs == {"alpha_long_a": "alpha_long_b", "alpha_long_b": "alpha_long_a"}
    assert manifest["num_clients"] == 2 and manifest["num_samples"] == 15 and manifest["fed_pycode_samples"] == 16
    assert manifest["skipped"] == {"single_sample_client": 1}
    assert manifest["clients"]["alpha"]["length_ratio_over_2"] == 0
    assert manifest["params"]["seed"] == 0 and manifest["fed_pycode"]["cache_key"] == Path(
        manifest["fed_pycode"]["data_file"]).parent.name


def test_data_card(site: Path, tmp_path: Path) -> None:
    card = (_build(site, tmp_path).parent / "README.md").read_text()
    for text in ("# Fed-PyCode-PA", "another function of the same client", "derangement", "default_rng",
                 "2× the shorter", "off-topic code, not a plausibly wrong answer", "Counts per client",
                 "| alpha | 10 | 10 |", "| beta-pkg | 5 | 5 |", "single_sample_client = 1", "Pairs: 15"):
        assert text in card, text


def test_deterministic_and_seeded(site: Path, tmp_path: Path) -> None:
    a = _build(site, tmp_path / "a")
    b = _build(site, tmp_path / "b")
    c = _build(site, tmp_path / "c", seed=1)
    assert a.read_bytes() == b.read_bytes() and a.parent.name == b.parent.name != c.parent.name
    pa, pc = read_fedllm_bench(a), read_fedllm_bench(c)
    assert [(p.instruction, p.chosen) for p in pa["alpha"]] == [(p.instruction, p.chosen) for p in pc["alpha"]]
    assert [p.rejected for p in pa["alpha"]] != [p.rejected for p in pc["alpha"]]


def test_cache_reuse(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = get_source("fed-pycode-pa")
    assert not source.is_built(tmp_path, **_opts(site))
    first = _build(site, tmp_path)
    assert source.is_built(tmp_path, **_opts(site)) and get_source("fed-pycode").is_built(tmp_path, **_opts(site))
    assert not source.is_built(tmp_path, **_opts(site, seed=1))  # the seed keys the cache
    assert not source.is_built(tmp_path, **_opts(site, min_samples=2))  # so do Fed-PyCode's options

    def no_rebuild(*a: object, **k: object) -> None:
        raise AssertionError("rebuilt although cached")

    with monkeypatch.context() as m:
        m.setattr(fed_pycode_pa, "read_fedllm_bench", no_rebuild)
        assert _build(site, tmp_path) == first
    # A new seed reuses the cached Fed-PyCode build.
    with monkeypatch.context() as m:
        m.setattr("fedllm.data.sources.fed_pycode._extract_all", no_rebuild)
        assert _build(site, tmp_path, seed=1).parent != first.parent
    first.write_text("{}")  # a corrupted build is not taken for a complete one
    assert not source.is_built(tmp_path, **_opts(site))
    assert _build(site, tmp_path) == first and source.is_built(tmp_path, **_opts(site))
    assert not source.is_built(tmp_path, **_opts(site, distributions=["nope"]))  # not installed: not built


def test_load_dataset(site: Path, tmp_path: Path) -> None:
    ds = load_dataset("fed-pycode-pa", cache_dir=tmp_path, test_fraction=0.2, **_opts(site))
    assert ds.name == "fed-pycode-pa" and ds.client_ids == ["alpha", "beta-pkg"]
    assert ds["alpha"].meta["kind"] == "preference" and ds.meta["build_kwargs"]["seed"] == 0
    assert all(isinstance(s, PreferenceSample) for c in ds for s in ds[c].train + ds[c].test)


def test_pair_client_rule() -> None:
    responses = [f"r{i}" + "x" * (10 + i) for i in range(30)]
    for seed in range(20):
        p = pair_client(responses, seed, "c")
        assert sorted(p.partner) == list(range(30)) and all(j != i for i, j in enumerate(p.partner))
    assert pair_client(responses, 0, "c") == pair_client(responses, 0, "c") != pair_client(responses, 0, "d")
    assert pair_client(["a" * 10], 0, "c").partner == (None,)
    two = pair_client(["a" * 10, "b" * 100], 0, "c")  # no partner within 2x: kept and counted
    assert two.partner == (1, 0) and two.length_ratio_over_2 == 2
    same = pair_client(["same code"] * 2 + ["other text", "more text"], 0, "c")  # identical texts never pair
    assert same.partner.count(None) == 0 and same.identical_implementations == 0 and same.partner[0] != 1
    three = pair_client(["same code"] * 2 + ["other text"], 0, "c")  # every 3-cycle links 0 and 1: skipped
    assert three.partner.count(None) == 1 and three.identical_implementations == 1
    assert pair_client(["same code"] * 2, 0, "c").partner == (None, None)
    # Lengths 100/300/600: a derangement within 2x exists; some seeds need a rotation (step 2b, e.g. seed 1).
    texts = [f"{i}" * n for i, n in enumerate([100, 100, 300, 300, 600, 600])]
    for seed in range(50):
        p = pair_client(texts, seed, "c")
        assert p.length_ratio_over_2 == 0 and sorted(p.partner) == list(range(6)), seed  # type: ignore[type-var]


def test_registry_and_options(tmp_path: Path) -> None:
    src = get_source("fed-pycode-pa")
    assert "fed-pycode-pa" in SOURCES and isinstance(src, fed_pycode_pa.FedPyCodePA)
    assert "DPO" in src.description and "same package" in src.description
    assert dict(src.default_kwargs) == {**FedPyCode.default_kwargs, "seed": 0}
    with pytest.raises(TypeError, match="no build option.*max_sample"):
        src.build(tmp_path, max_sample=3)
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        src.build(tmp_path, seed=-1)
