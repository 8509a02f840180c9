"""Shepherd's (FedIT) Dolly-15k federations: ``shepherd-dolly-shards`` and ``shepherd-dolly-dirichlet``.

Reproduces ``client_data_allocation.py`` of JayZhang42/FederatedGPT-Shepherd (Zhang et al., "Towards
Building the Federated GPT: Federated Instruction Tuning"): first a global test set of
``test_per_category`` (10) samples per category is held out, then the rest is split over
``num_clients`` (100) clients either

* pathologically (``diff_quantity=0``): sorted by category, cut into 2 shards per client, each client
  gets 2 random shards. Here shards are cut at category boundaries (``cut_at_labels``), so a client
  sees at most 2 categories; Shepherd cuts the sorted list into equal shards, so a shard at a
  boundary holds two (``cut_at_labels=False`` does that);
* or with a Dirichlet over the category (``diff_quantity=1``): alpha 0.5, every client >= 40
  samples, and Shepherd's balancing (a client holding N/num_clients samples gets no more), which
  leaves client sizes unequal.

The draws use ``numpy.random.default_rng`` seeded from ``seed`` (42, Shepherd's seed value; the draws
themselves differ from Shepherd's pandas/legacy-numpy ones). A Dolly row becomes one single-turn
sample whose instruction is ``instruction``, followed by a blank line and ``context`` when there is
one. The build directory holds the federation (FedLLM-Bench file), ``global_test.json`` (the held-out
set as a single-client JSON list whose records also carry their ``category``), ``partition.png``
(per-client category composition) and ``manifest.json`` (counts, seeds, parameters, partition
summary and per-client category counts), written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from fedllm.data.fedllm_bench import parse_record, record_from_sample, write_fedllm_bench
from fedllm.data.partition import Splitter, apply_partition, get_splitter
from fedllm.data.schema import DataError, InstructionSample
from fedllm.data.sources import DatasetSource, register_source
from fedllm.data.sources.builds import MANIFEST_FILE, build_key, file_sha256, read_build_manifest, say, staging
from fedllm.jsonl import atomic_write
from fedllm.seeding import derive_seed

__all__ = [
    "BUILDER_VERSION",
    "DOLLY_FIELDS",
    "HUB_ID",
    "ShepherdDollyDirichlet",
    "ShepherdDollyShards",
    "build_shepherd_dolly",
    "format_summary",
    "load_dolly_rows",
]

BUILDER_VERSION = 1  # part of the cache key: bump when the output of a build changes
HUB_ID = "databricks/databricks-dolly-15k"
DOLLY_FIELDS = ("instruction", "context", "response", "category")
GLOBAL_TEST_FILE = "global_test.json"
PLOT_FILE = "partition.png"
_FORMATS = (".json", ".jsonl", ".parquet", ".csv")
_NOT_KEYED = ("progress", "data_files")  # data_files enter the key by content, not by path

_COMMON_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        "num_clients": 100,
        "test_per_category": 10,
        "seed": 42,
        "data_files": None,  # local json/jsonl/parquet/csv file(s) in Dolly's schema; None: the hub
        "dataset": HUB_ID,
        "revision": None,
        "progress": True,
    }
)


# --------------------------------------------------------------------------------------------
# Loading (TODO: move to the shared public-source helpers in fedllm.data.sources.hub)
# --------------------------------------------------------------------------------------------


def _data_paths(data_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """`data_files` as a non-empty list of existing files of the supported types."""
    raw = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    if not raw:
        raise DataError("data_files is empty")
    paths = [Path(p).expanduser() for p in raw]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: no such data file")
        if p.suffix.lower() not in _FORMATS:
            raise DataError(f"{p}: unsupported data file type; expected one of {list(_FORMATS)}")
    return paths


def _read_file(path: Path) -> list[Any]:
    """The rows of one JSON (a list of objects), JSON Lines, Parquet or CSV file (with a header row, as
    the hub's and fed-dolly's CSV copies)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix.lower() == ".csv":
        from fedllm.data.sources.hub import csv_rows

        return [dict(row.data) for row in csv_rows(path, "shepherd-dolly", DOLLY_FIELDS)]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8: {e}") from None
    lines = enumerate(text.splitlines(), 1) if path.suffix.lower() == ".jsonl" else [(1, text)]
    rows: list[Any] = []
    for n, chunk in lines:
        try:
            if chunk.strip():
                rows.append(json.loads(chunk))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON at line {n + e.lineno - 1}, column {e.colno}: {e.msg}") from None
    if path.suffix.lower() == ".jsonl":
        return rows
    rows = rows[0] if rows else []
    if not isinstance(rows, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows, got {type(rows).__name__}")
    return rows


def load_dolly_rows(
    data_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    dataset: str = HUB_ID,
    revision: str | None = None,
) -> list[dict[str, Any]]:
    """Dolly rows (dicts with DOLLY_FIELDS) from local JSON/JSONL/Parquet/CSV `data_files`, in order, or,
    when None, from the hub dataset `dataset` through datasets.load_dataset (and its cache)."""
    if data_files is None:
        import datasets

        try:
            hub = datasets.load_dataset(dataset, revision=revision, split="train")
        except Exception as e:  # offline, gated, missing: say how to build from local files
            raise DataError(
                f"could not load {dataset!r} from the Hugging Face hub ({type(e).__name__}: {e}); pass "
                "data_files= (a local JSON/JSONL/Parquet copy of Dolly-15k) to build without the hub"
            ) from e
        sources = [(f"{dataset}@{revision or 'main'}", hub)]
    else:
        sources = [(str(p), _read_file(p)) for p in _data_paths(data_files)]
    rows: list[dict[str, Any]] = []
    for where, part in sources:
        for i, row in enumerate(part):
            missing = [f for f in DOLLY_FIELDS if f not in row] if isinstance(row, dict) else list(DOLLY_FIELDS)
            if missing:
                raise DataError(
                    f"{where}: row {i} is not in Dolly's schema: missing field(s) {missing}; "
                    f"expected an object with {list(DOLLY_FIELDS)}"
                )
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Plan (parameters, splitter, cache key)
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    name: str
    params: dict[str, Any]
    splitter: Splitter
    data: dict[str, Any]  # what identifies the input: hub id/revision or data file hashes
    paths: list[Path] | None
    key: str


def _plan(name: str, splitter_name: str, params: Mapping[str, Any]) -> _Plan:
    """Validate the parameters (ValueError names a bad one), build the splitter, hash the input."""
    params = dict(params)
    test_k = params["test_per_category"]
    if isinstance(test_k, bool) or not isinstance(test_k, int) or test_k < 0:
        raise ValueError(f"{name}: test_per_category must be an integer >= 0, got {test_k!r}")
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name}: seed must be an integer >= 0, got {seed!r}")
    split_params = {k: v for k, v in params.items() if k not in _COMMON_KWARGS or k == "num_clients"}
    splitter = get_splitter(splitter_name, **split_params)  # validates them
    if split_params.get("min_size", 1) < 1:
        raise ValueError(f"{name}: min_size must be >= 1 (a client cannot be empty), got {split_params['min_size']}")
    if params["data_files"] is None:
        paths = None
        data: dict[str, Any] = {"hub": params["dataset"], "revision": params["revision"]}
    else:
        paths = _data_paths(params["data_files"])
        params["data_files"] = [str(p) for p in paths]
        data = {"data_files_sha256": [file_sha256(p) for p in paths]}
    blob = {
        "builder": BUILDER_VERSION,
        "source": name,
        "params": {k: v for k, v in params.items()
                   if k not in _NOT_KEYED and not (paths and k in ("dataset", "revision"))},
        "data": data,
    }
    return _Plan(name, params, splitter, data, paths, build_key(blob))


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _valid(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows with a non-empty instruction, response and category; drop counts by reason."""
    kept, dropped = [], Counter()
    for row in rows:
        text = [row.get(f) for f in ("instruction", "response")]
        category = row.get("category")
        context = row.get("context")
        if not all(isinstance(t, str) and t.strip() for t in text):
            dropped["empty_instruction_or_response"] += 1
        elif not (isinstance(category, str) and category.strip()):
            dropped["missing_category"] += 1
        elif context is not None and not isinstance(context, str):
            dropped["bad_context"] += 1
        else:
            kept.append(row)
    return kept, dict(dropped)


def _sample(row: Mapping[str, Any]) -> InstructionSample:
    context = row.get("context") or ""
    instruction = f"{row['instruction']}\n\n{context}" if context.strip() else row["instruction"]
    return InstructionSample.single_turn(instruction, row["response"])


def _hold_out(rows: list[dict[str, Any]], per_category: int, seed: int) -> tuple[list[int], list[int]]:
    """(test indices sorted by category then row, remaining indices): `per_category` random rows
    of every category, as Shepherd's groupby('category').sample(n=10)."""
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_cat.setdefault(row["category"], []).append(i)
    test: list[int] = []
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        if len(idx) <= per_category:
            raise DataError(
                f"category {cat!r} has {len(idx)} rows: too few to hold out test_per_category={per_category} "
                "and keep one for training"
            )
        test += sorted(rng.choice(idx, size=per_category, replace=False).tolist()) if per_category else []
    held = set(test)
    return test, [i for i in range(len(rows)) if i not in held]


def _write_global_test(rows: list[dict[str, Any]], path: Path) -> None:
    """A FedLLM-Bench single-client JSON list; each record also carries its (ignored) category."""
    records = []
    for i, row in enumerate(rows):
        rec = {**record_from_sample(_sample(row)), "category": row["category"]}
        parse_record(rec, file=path, client=path.stem, index=i)
        records.append(json.dumps(rec, ensure_ascii=False))
    atomic_write(path, lambda f: f.write("[\n  " + ",\n  ".join(records) + "\n]\n"))


def _is_complete(build_dir: Path, key: str) -> bool:
    """Whether `build_dir` holds a complete build with this key: manifest, data and global test intact."""
    manifest = read_build_manifest(build_dir, key)
    if manifest is None:
        return False
    test = manifest.get("global_test")
    try:
        return test is None or file_sha256(build_dir / test["file"]) == test["sha256"]
    except (OSError, KeyError, TypeError):
        return False


def _write_build(plan: _Plan, out: Path, data_file: str) -> dict[str, Any]:
    """Load, hold out the global test, split and write everything into `out`; returns the manifest."""
    name, params = plan.name, plan.params
    raw = load_dolly_rows(plan.paths, dataset=params["dataset"], revision=params["revision"])
    rows, dropped = _valid(raw)
    test_seed, split_seed = derive_seed(params["seed"], "global-test"), derive_seed(params["seed"], "partition")
    test_idx, train_idx = _hold_out(rows, params["test_per_category"], test_seed)
    train_rows = [rows[i] for i in train_idx]
    partition = plan.splitter.split(train_rows, label="category", seed=split_seed)
    clients = {cid: [_sample(r) for r in part] for cid, part in apply_partition(partition, train_rows).items()}
    data = write_fedllm_bench(clients, out / data_file)
    global_test = None
    if test_idx:
        _write_global_test([rows[i] for i in test_idx], out / GLOBAL_TEST_FILE)
        global_test = {
            "file": GLOBAL_TEST_FILE,
            "sha256": file_sha256(out / GLOBAL_TEST_FILE),
            "num_samples": len(test_idx),
            "per_category": dict(sorted(Counter(rows[i]["category"] for i in test_idx).items())),
            "seed": test_seed,
            "note": "held out before partitioning, as Shepherd's global_test.json; "
            "a single-client FedLLM-Bench list whose records also carry 'category'",
        }
    partition.plot(out / PLOT_FILE, title=f"{name}: {partition.num_clients} clients, seed {params['seed']}")
    manifest = {
        "dataset": name,
        "builder_version": BUILDER_VERSION,
        "cache_key": plan.key,
        "python": platform.python_version(),
        "params": {k: v for k, v in params.items() if k != "progress"},
        "input": plan.data,
        "data_file": data_file,
        "content_sha256": file_sha256(data),
        "plot_file": PLOT_FILE,
        "num_rows": len(raw),
        "dropped": dropped,
        "categories": dict(sorted(Counter(r["category"] for r in rows).items())),
        "global_test": global_test,
        "num_clients": len(clients),
        "num_samples": sum(map(len, clients.values())),
        "clients": {cid: len(s) for cid, s in clients.items()},
        "partition": {**partition.to_dict(), "seed_derivation": "derive_seed(seed, 'partition')"},
    }
    atomic_write(out / MANIFEST_FILE, lambda f: f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"))
    return manifest


def build_shepherd_dolly(name: str, splitter_name: str, cache_dir: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Build source `name` (split by `splitter_name`, "shards" or "dirichlet") under
    `cache_dir/<key>/` — `cache_dir` is the source's own directory — or reuse a complete build;
    returns the federation file. `kwargs` are the source's resolved build options."""
    plan = _plan(name, splitter_name, kwargs)
    progress = bool(plan.params["progress"])
    cache_dir = Path(cache_dir)
    data_file = f"{name}.json"
    if _is_complete(cache_dir / plan.key, plan.key):
        say(progress, f"{name}: using cached build {cache_dir / plan.key}")
        return cache_dir / plan.key / data_file
    start = time.perf_counter()
    what = "data files" if plan.paths else plan.params["dataset"]
    say(progress, f"{name}: loading {what} -> {cache_dir / plan.key}")
    with staging(cache_dir, plan.key, _is_complete) as tmp:
        manifest = _write_build(plan, tmp, data_file)
    say(progress, format_summary(manifest, seconds=time.perf_counter() - start))
    return cache_dir / plan.key / data_file


def format_summary(manifest: Mapping[str, Any], seconds: float | None = None) -> str:
    """Counts of a build: clients, samples, held-out test, drops and the partition's skew."""
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    s = manifest["partition"]["summary"]
    test = manifest["global_test"]
    lines = [
        f"{manifest['dataset']}: {manifest['num_clients']} clients, {manifest['num_samples']} training samples, "
        f"global test {test['num_samples'] if test else 0} ({len(manifest['categories'])} categories){took}",
        f"  client sizes {s['size_min']}..{s['size_max']} (CV {s['size_cv']:.2f}), categories per client <= "
        f"{s['max_labels_per_client']} (mean {s['mean_labels_per_client']:.2f}), mean TV to global {s['mean_tv']:.3f}",
        f"  dropped rows: {', '.join(f'{k}={v}' for k, v in manifest['dropped'].items()) or 'none'}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class _ShepherdDolly(DatasetSource):
    splitter: ClassVar[str] = ""

    def build(self, cache_dir: Path, **kwargs: Any) -> Path:
        """Build or reuse under <cache_dir>/datasets/<name>/; returns the FedLLM-Bench file."""
        params = self.resolve_kwargs(kwargs)
        return build_shepherd_dolly(self.name, self.splitter, self.dataset_dir(cache_dir), **params)

    def is_built(self, cache_dir: Path, **kwargs: Any) -> bool:
        """Whether a complete build for these arguments (and data file contents) is cached."""
        plan = _plan(self.name, self.splitter, self.resolve_kwargs(kwargs))
        return _is_complete(self.dataset_dir(cache_dir) / plan.key, plan.key)


@register_source("shepherd-dolly-shards")
class ShepherdDollyShards(_ShepherdDolly):
    """Shepherd's pathological non-IID Dolly: 2 category-pure shards per client."""

    description = (
        "Dolly-15k as in FedIT/Shepherd: 10 per category held out as global_test.json, the rest sorted by "
        "category into 2 shards per client (100 clients). Shards are cut at category boundaries "
        "(cut_at_labels=true), so a client sees at most 2 categories; Shepherd's own script cuts equal shards, "
        "which gives up to 3 (--set cut_at_labels=false)."
    )
    splitter = "shards"
    default_kwargs = MappingProxyType({**_COMMON_KWARGS, "shards_per_client": 2, "cut_at_labels": True})


@register_source("shepherd-dolly-dirichlet")
class ShepherdDollyDirichlet(_ShepherdDolly):
    """Shepherd's diff_quantity Dolly: Dirichlet(0.5) over the category, >= 40 samples per client."""

    description = (
        "Dolly-15k as in FedIT/Shepherd (diff_quantity): 10 per category held out as global_test.json, the "
        "rest split by a Dirichlet(0.5) over the category with balancing (unequal sizes, >= 40 per client)."
    )
    splitter = "dirichlet"
    default_kwargs = MappingProxyType(
        {**_COMMON_KWARGS, "alpha": 0.5, "min_size": 40, "balance": True, "max_retries": 1000}
    )
