"""Registry of dataset sources: named recipes that build a FedLLM-Bench-format file in a cache.

A source is a class decorated with ``@register_source("name")`` that has ``name``, ``description``,
``default_kwargs``, ``build(cache_dir, **kwargs) -> Path`` (build or reuse the cached file and return
its path) and ``is_built(cache_dir, **kwargs) -> bool``. `cache_dir` is the cache root
(``$FEDLLM_CACHE`` or ~/.cache/fedllm); a source keeps its files under ``cache_dir/datasets/<name>/``
(:meth:`DatasetSource.dataset_dir`). :func:`load_dataset` accepts a registered
name or the path of any FedLLM-Bench file. Each source lives in its own module, imported at the
bottom of this file (one line per source).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar, TypeVar

from fedllm.data.fedllm_bench import load_fedllm_bench
from fedllm.data.sources.builds import MANIFEST_FILE, read_build_manifest
from fedllm.data.schema import DataError, FederatedDataset
from fedllm.paths import cache_root
from fedllm.registry import Registry

__all__ = [
    "SOURCES",
    "DatasetSource",
    "dataset_cache_dir",
    "default_cache_dir",
    "get_source",
    "load_dataset",
    "register_source",
]


class DatasetSource:
    """Base class of sources: holds the metadata and merges/validates build keyword arguments."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_kwargs: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def resolve_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """default_kwargs updated by `kwargs`; an unknown keyword is a TypeError listing the known ones."""
        unknown = sorted(set(kwargs) - set(self.default_kwargs))
        if unknown:
            raise TypeError(
                f"source {self.name!r} has no build option(s) {unknown}; known: {sorted(self.default_kwargs)}"
            )
        return {**self.default_kwargs, **kwargs}

    def dataset_dir(self, cache_dir: str | os.PathLike[str]) -> Path:
        """This source's directory in the cache root `cache_dir`: <cache_dir>/datasets/<name>/."""
        return dataset_cache_dir(self.name, cache_dir)

    def build(self, cache_dir: Path, **kwargs: Any) -> Path:  # pragma: no cover - interface
        """Build (or reuse) the dataset under `self.dataset_dir(cache_dir)`; returns the file's path."""
        raise NotImplementedError

    def builds(self, cache_dir: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
        """Every complete build of this source in the cache, whatever its arguments or input (hub or
        local files), newest first: (data file, manifest)."""
        root = self.dataset_dir(cache_dir)
        found = []
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            if d.is_dir() and not d.name.startswith(".") and (m := read_build_manifest(d, d.name)) is not None:
                found.append((d / m["data_file"], m))
        return sorted(found, key=lambda b: b[0].stat().st_mtime, reverse=True)

    def client_attributes(self, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Per client, the attributes a run may group clients by (language, category …), from the
        build's manifest: by default each client's plain (string) entries there."""
        clients = manifest.get("clients", {})
        return {cid: {k: v for k, v in info.items() if isinstance(v, str)} if isinstance(info, Mapping) else {}
                for cid, info in clients.items()}

    def is_built(self, cache_dir: Path, **kwargs: Any) -> bool:  # pragma: no cover - interface
        """Whether `build` with these arguments would reuse a complete cached file."""
        raise NotImplementedError


SOURCES: Registry[type[DatasetSource]] = Registry("dataset source")
"""The registry: source name -> class (filled by @register_source at import time)."""

_S = TypeVar("_S", bound=type)


def register_source(name: str) -> Callable[[_S], _S]:
    """Class decorator registering a source under a unique lower-case `name` (sets `cls.name`); the
    class must have build(), is_built(), a `description` string and a `default_kwargs` mapping."""
    register = SOURCES.register(name)  # checks the name now, at the decorator line

    def decorate(cls: _S) -> _S:
        for attr in ("build", "is_built"):
            if not callable(getattr(cls, attr, None)):
                raise TypeError(f"source {name!r}: {cls.__qualname__} has no method {attr}()")
        if not isinstance(getattr(cls, "description", None), str):
            raise TypeError(f"source {name!r}: {cls.__qualname__} needs a `description` string")
        if not isinstance(getattr(cls, "default_kwargs", None), Mapping):
            raise TypeError(f"source {name!r}: {cls.__qualname__} needs a `default_kwargs` mapping")
        return register(cls)

    return decorate


def get_source(name: str) -> DatasetSource:
    """An instance of the source registered as `name` (case-insensitive); ValueError lists the known names."""
    cls = SOURCES.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise SOURCES.error(SOURCES.unknown(name))
    return cls()


def default_cache_dir() -> Path:
    """`$FEDLLM_CACHE`, else ~/.cache/fedllm."""
    return cache_root()


def dataset_cache_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where source `name` keeps its builds: <cache_dir or default>/datasets/<name>/."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "datasets" / name


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    min_test: int = 1,
    max_clients: int | None = None,
    **build_kwargs: Any,
) -> FederatedDataset:
    """A registered source (built into the cache if needed) or a FedLLM-Bench file, split per client.

    A registered name wins over a file of the same name. `cache_dir` is the cache root (default
    `$FEDLLM_CACHE` or ~/.cache/fedllm); `seed` seeds only the train/test split, and
    `build_kwargs` go to the source's build (they change what is built, so they key its cache).
    """
    split = {"test_fraction": test_fraction, "seed": seed, "min_test": min_test, "max_clients": max_clients}
    if isinstance(name_or_path, str) and name_or_path.lower() in SOURCES:
        source = get_source(name_or_path)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = source.build(root, **build_kwargs)
        dataset = load_fedllm_bench(path, name=source.name, **split)
        dataset.meta["source_name"] = source.name
        dataset.meta["build_kwargs"] = source.resolve_kwargs(build_kwargs)
        manifest = path.parent / MANIFEST_FILE
        if manifest.is_file():
            dataset.meta["client_attributes"] = source.client_attributes(json.loads(manifest.read_text(encoding="utf-8")))
        return dataset
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise DataError(f"{name_or_path!s}: no such file, and {SOURCES.unknown(str(name_or_path))}")
    if build_kwargs:
        raise TypeError(f"build options {sorted(build_kwargs)} only apply to registered sources, not to a file")
    return load_fedllm_bench(path, **split)


# Sources: one import per source module; importing it registers it.
from fedllm.data.sources import fed_pycode as fed_pycode  # noqa: E402,F401
from fedllm.data.sources import shepherd_dolly as shepherd_dolly  # noqa: E402,F401
from fedllm.data.sources import fed_aya as fed_aya  # noqa: E402,F401
from fedllm.data.sources import fed_chatbot_it as fed_chatbot_it  # noqa: E402,F401
from fedllm.data.sources import fed_chatbot_pa as fed_chatbot_pa  # noqa: E402,F401
from fedllm.data.sources import fed_wildchat as fed_wildchat  # noqa: E402,F401
from fedllm.data.sources import fs_llm as fs_llm  # noqa: E402,F401
from fedllm.data.sources import fed_pycode_pa as fed_pycode_pa  # noqa: E402,F401
