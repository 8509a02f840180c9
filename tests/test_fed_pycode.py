"""Fed-PyCode on tiny fake distributions (filters, determinism, manifest, cache), the source
registry, and one build of the real default dataset."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fedllm.data import sources
from fedllm.data.fedllm_bench import read_fedllm_bench
from fedllm.data.schema import DataError
from fedllm.data.sources import (
    SOURCES,
    DatasetSource,
    dataset_cache_dir,
    default_cache_dir,
    get_source,
    load_dataset,
    register_source,
)
from fedllm.data.sources import fed_pycode
from fedllm.data.sources.fed_pycode import FilterParams, build_fed_pycode, extract_functions, is_public_module
from fedllm.registry import Registry
from tests.conftest import make_dist


def _good(name: str, i: int) -> str:
    """A public, documented, non-trivial function unique by `i`."""
    return textwrap.dedent(
        f'''
        def {name}(x: int, y: int = {i}) -> int:
            """Combine x and y with the offset number {i} and return the sum."""
            total = x + y
            for k in range({i}):
                total += k * {i}
            return total
        '''
    )


FILTERED = textwrap.dedent(
    '''
    def trivial(x):
        """Return the argument unchanged, nothing more."""
        return x


    def stub(x):
        """Subclasses must implement this operation."""
        raise NotImplementedError("abstract")


    def short_doc(x):
        """Short."""
        y = x + 1
        z = y * 2
        return z


    def no_doc(x):
        y = x + 1
        z = y * 2
        return z


    def _private(x):
        """A private helper that is long enough to count."""
        y = x + 1
        z = y * 2
        return z


    class _Hidden:
        def visible_name(self):
            """A method of a private class is private too."""
            y = 1
            z = y * 2
            return z
    '''
)

HUGE = "def huge(x):\n    \"\"\"A function that is far too long to be a sample.\"\"\"\n" + "".join(
    f"    x = x + {i}\n" for i in range(60)
) + "    return x\n"

METHOD = textwrap.dedent(
    '''
    class Widget:
        """A widget."""

        @property
        def area(self) -> int:
            """The area of the widget in square pixels."""
            w = self.width
            h = self.height
            return w * h
    '''
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    alpha_core = "".join(_good(f"alpha_fn_{i}", i) for i in range(8)) + FILTERED + HUGE + METHOD
    make_dist(site, "alpha", "1.0", {
        "alpha/__init__.py": _good("alpha_init_fn", 100),
        "alpha/core.py": alpha_core,
        "alpha/_impl.py": _good("impl_fn", 200),  # private module
        "alpha/tests/test_core.py": _good("test_fn", 300),  # test module
        "alpha/broken.py": "def oops(:\n",
    })
    # beta repeats two of alpha's functions verbatim: alpha sorts first and keeps them.
    make_dist(site, "Beta_Pkg", "2.0", {
        "beta_pkg/mod.py": "".join(_good(f"beta_fn_{i}", 1000 + i) for i in range(6)) + _good("alpha_fn_0", 0) + _good("alpha_fn_1", 1),
    })
    make_dist(site, "gamma", "0.1", {"gamma.py": _good("gamma_fn", 5000)})  # too few samples
    return site


def _build(site: Path, cache: Path, **kw: Any) -> Path:
    opts: dict[str, Any] = {"distributions": ["alpha", "beta-pkg", "gamma"], "min_samples": 3, "workers": 1,
                            "search_path": [site], "progress": False}
    return build_fed_pycode(cache, **{**opts, **kw})


def test_extract_functions_filters() -> None:
    source = _good("good_fn", 3) + FILTERED + HUGE + METHOD
    samples, reasons = extract_functions(source, "pkg.mod")
    assert [s.qualname for s in samples] == ["good_fn", "Widget.area"]
    assert reasons == {"trivial": 1, "stub": 1, "short_docstring": 1, "no_docstring": 1, "private_name": 1,
                       "private_class": 1, "too_many_lines": 1}
    good, method = samples
    assert good.instruction.startswith("Implement the following Python function.\n\n```python\ndef good_fn(x: int, y: int = 3) -> int:\n")
    assert '"""Combine x and y' in good.instruction and good.instruction.endswith('"""\n```')
    assert good.response.startswith("```python\ndef good_fn(x: int, y: int = 3) -> int:\n    total = x + y\n")
    assert "Combine" not in good.response and good.response.endswith("return total\n```")
    assert "class `Widget`" in method.instruction
    assert method.response.startswith("```python\ndef area(self) -> int:\n    w = self.width")  # dedented, no decorator
    assert "@property" not in method.response + method.instruction
    assert extract_functions(source, "m", FilterParams(max_chars=200))[1]["too_long"] == 2
    assert extract_functions("def f(:", "m")[1] == {"syntax_error_file": 1}


def test_public_modules() -> None:
    assert is_public_module("pkg/mod.py") and is_public_module("pkg/__init__.py") and is_public_module("pkg/testing.py")
    for bad in ("pkg/_impl.py", "pkg/tests/x.py", "pkg/test_x.py", "pkg/x_test.py", "pkg/conftest.py",
                "../../bin/tool.py", "pkg/mod.pyi", "pkg/_sub/mod.py"):
        assert not is_public_module(bad), bad


def test_build_fake_site(site: Path, tmp_path: Path) -> None:
    path = _build(site, tmp_path / "cache")
    clients = read_fedllm_bench(path)
    assert list(clients) == ["alpha", "beta-pkg"]  # gamma: 1 sample < min_samples
    alpha = {s.response.split("(")[0].split()[-1] for s in clients["alpha"]}
    assert alpha == {f"alpha_fn_{i}" for i in range(8)} | {"alpha_init_fn", "area"}
    beta = {s.response.split("(")[0].split()[-1] for s in clients["beta-pkg"]}
    assert beta == {f"beta_fn_{i}" for i in range(6)}  # duplicates of alpha dropped

    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["num_clients"] == 2 and manifest["num_samples"] == 16
    assert manifest["clients"] == {"alpha": 10, "beta-pkg": 6}
    dists = manifest["distributions"]
    assert dists["alpha"]["version"] == "1.0" and dists["alpha"]["samples"] == 10 and dists["alpha"]["status"] == "kept"
    assert dists["gamma"]["status"].startswith("dropped") and dists["gamma"]["samples"] == 0
    assert dists["alpha"]["dropped"]["private_or_test_module_file"] == 2
    assert dists["alpha"]["dropped"]["syntax_error_file"] == 1
    assert dists["beta-pkg"]["dropped"]["duplicate"] == 2
    assert manifest["dropped"]["client_below_min_samples"] == 1
    for reason in ("trivial", "stub", "short_docstring", "private_name", "too_many_lines"):
        assert manifest["dropped"][reason] == 1, reason
    assert manifest["params"]["min_samples"] == 3 and manifest["params"]["distributions"] == ["alpha", "beta-pkg", "gamma"]
    assert manifest["python"].count(".") == 2 and manifest["cache_key"] == path.parent.name
    assert manifest["content_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_deterministic_and_pool_equivalent(site: Path, tmp_path: Path) -> None:
    a = _build(site, tmp_path / "a")
    b = _build(site, tmp_path / "b", workers=2)
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "manifest.json").read_bytes() == (b.parent / "manifest.json").read_bytes()


def test_caps_are_seeded(site: Path, tmp_path: Path) -> None:
    c0 = read_fedllm_bench(_build(site, tmp_path / "a", max_samples_per_client=4))
    c0b = read_fedllm_bench(_build(site, tmp_path / "b", max_samples_per_client=4))
    c1 = read_fedllm_bench(_build(site, tmp_path / "c", max_samples_per_client=4, selection_seed=1))
    assert [len(v) for v in c0.values()] == [4, 4] and c0 == c0b and c0 != c1


def test_cache_reuse_and_invalidation(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    source = get_source("fed-pycode")
    opts = {"distributions": ["alpha", "beta-pkg"], "min_samples": 3, "workers": 1, "search_path": [site], "progress": False}
    assert not source.is_built(cache, **opts)
    first = source.build(cache, **opts)
    assert source.is_built(cache, **opts)
    assert first.parent.parent == cache / "datasets" / "fed-pycode"  # cache root -> datasets/<name>/<key>/

    def no_rebuild(*a: object, **k: object) -> None:
        raise AssertionError("rebuilt although cached")

    with monkeypatch.context() as m:
        m.setattr(fed_pycode, "_extract_all", no_rebuild)
        assert source.build(cache, **opts) == first
    assert not source.is_built(cache, **{**opts, "min_samples": 4})  # parameters key the cache

    # A new version of a distribution gives a new key: the stale build is not reused.
    meta = next(site.glob("alpha-*.dist-info")).rename(site / "alpha-1.1.dist-info") / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.0", "Version: 1.1"))
    assert not source.is_built(cache, **opts)
    second = source.build(cache, **opts)
    assert second.parent != first.parent and first.exists()
    assert json.loads((second.parent / "manifest.json").read_text())["distributions"]["alpha"]["version"] == "1.1"

    # A corrupted build is not taken for a complete one.
    second.write_text("{}")
    assert not source.is_built(cache, **opts)
    assert source.build(cache, **opts) == second and source.is_built(cache, **opts)


def test_crash_leaves_no_build(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"

    def crash(clients: object, path: Path) -> None:
        path.write_text('{"alpha": [')  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(fed_pycode, "write_fedllm_bench", crash)
    with pytest.raises(KeyboardInterrupt):
        _build(site, cache)
    assert list(cache.iterdir()) == []
    assert not get_source("fed-pycode").is_built(cache, distributions=["alpha", "beta-pkg", "gamma"], min_samples=3,
                                                 search_path=[site])


def test_missing_distributions(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataError, match="not installed.*nope"):
        _build(site, tmp_path / "a", distributions=["alpha", "nope"])
    monkeypatch.setattr(fed_pycode, "DEFAULT_DISTRIBUTIONS", ("alpha", "beta-pkg", "nope"))
    path = _build(site, tmp_path / "b", distributions=None, progress=True)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["distributions"]["nope"]["status"] == "skipped: not installed"
    err = capsys.readouterr().err
    assert "skipping nope: not installed" in err and "2 clients, 16 samples" in err


def test_unknown_build_option(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no build option.*max_sample"):
        get_source("fed-pycode").build(tmp_path, max_sample=3)


# ---------------------------------------------------------------------------------- registry


def test_registry_lookup_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "fed-pycode" in SOURCES and isinstance(get_source("Fed-PyCode"), fed_pycode.FedPyCode)
    assert get_source("fed-pycode").name == "fed-pycode" and get_source("fed-pycode").description
    with pytest.raises(ValueError, match="unknown dataset source 'fed-pycod'; known: .*fed-pycode.*; did you mean 'fed-pycode'"):
        get_source("fed-pycod")
    with pytest.raises(ValueError, match="lower-case"):
        register_source("Bad Name")
    with pytest.raises(ValueError, match="already registered"):
        register_source("fed-pycode")(type("Other", (DatasetSource,), {}))

    scratch = Registry("dataset source")  # a copy, so that "toy" does not stay registered
    for name, cls in SOURCES.items():
        scratch.register(name)(cls)
    monkeypatch.setattr(sources, "SOURCES", scratch)

    @register_source("toy")
    class Toy(DatasetSource):
        description = "two clients"
        default_kwargs = {"n": 2}

        def build(self, cache_dir: Path, **kwargs: Any) -> Path:
            n = self.resolve_kwargs(kwargs)["n"]
            cache_dir.mkdir(parents=True, exist_ok=True)
            path = cache_dir / f"toy-{n}.json"
            path.write_text(json.dumps({c: [{"instruction": f"q{i}", "response": "r"} for i in range(n)] for c in "ab"}))
            return path

        def is_built(self, cache_dir: Path, **kwargs: Any) -> bool:
            return (cache_dir / f"toy-{self.resolve_kwargs(kwargs)['n']}.json").exists()

    assert sources.SOURCES["toy"] is Toy and Toy.name == "toy"


def test_load_dataset(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLLM_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    assert dataset_cache_dir("fed-pycode") == tmp_path / "envcache" / "datasets" / "fed-pycode"
    ds = load_dataset("fed-pycode", test_fraction=0.2, seed=1, distributions=["alpha", "beta-pkg"], min_samples=3,
                      workers=1, search_path=[site], progress=False)
    assert ds.name == "fed-pycode" and ds.client_ids == ["alpha", "beta-pkg"]
    assert (ds["alpha"].num_train, len(ds["alpha"].test)) == (8, 2) and ds["alpha"].meta["num_samples"] == 10
    assert ds.meta["source"].startswith(str(tmp_path / "envcache" / "datasets" / "fed-pycode"))
    # A path loads as a FedLLM-Bench file.
    again = load_dataset(ds.meta["source"], test_fraction=0.2, seed=1)
    assert [again[c].test for c in again] == [ds[c].test for c in ds]
    with pytest.raises(DataError, match="no such file.*unknown dataset source .*; known: .*fed-pycode"):
        load_dataset(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="only apply to registered sources"):
        load_dataset(ds.meta["source"], min_samples=3)


# ---------------------------------------------------------------------------------- real data


def test_real_default_build(tmp_path: Path) -> None:
    """The real dataset from the installed dependencies (about 20 s on 2 cores)."""
    ds = load_dataset("fed-pycode", cache_dir=tmp_path, progress=False)
    assert len(ds) >= 15
    sizes = [ds[c].meta["num_samples"] for c in ds]
    assert min(sizes) >= 40 and max(sizes) <= 400 and sum(sizes) > 2000
    sample = ds[ds.client_ids[0]].train[0]
    assert sample.instruction.startswith("Implement the following") and sample.response.startswith("```python\n")
    assert all(len(s.instruction) + len(s.response) <= 1500 for c in ds for s in ds[c].train[:50])
