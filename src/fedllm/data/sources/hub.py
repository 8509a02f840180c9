"""What the builders of published federations share: reading a public source from the Hugging Face
hub or from the user's local copy of it, field checks, drop accounting, the cache key, the manifest
and the atomic publication of a build.

A builder (:class:`PublicSource` subclass) names the hub dataset it reads (``hub_id``, ``hub_config``,
``split``) and the fields it needs, and turns the rows into clients in :meth:`PublicSource.construct`.
Every builder takes the same input options (:data:`INPUT_KWARGS`):

* ``data_files``: ``None`` (read ``hub_id`` through ``datasets.load_dataset``) or a path / list of
  paths to JSON, JSON Lines, Parquet or CSV files (optionally ``.gz``) holding the source's rows in
  its published schema, or a directory: one written by ``Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk`` (``split`` picks the split), or a folder of such data files (a hub
  snapshot; files whose name carries ``split`` as a token, e.g. ``train-00000-of-00001.parquet``,
  are read when there are any);
* ``revision``: hub revision (branch, tag or commit) read when ``data_files`` is None;
* ``hub_id`` and ``split``: where to read from; ``progress``: print counts to stderr.

The cache key covers the builder version, the content-relevant parameters and the input: the hub
id/config/split/revision, or the SHA-256 of every local file. Computing it never touches the
network, so ``is_built`` is cheap and offline. A build is written to a temporary directory and
renamed into place once the data file and manifest.json are complete.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, ClassVar

from fedllm.data.fedllm_bench import write_fedllm_bench
from fedllm.data.schema import DataError, InstructionSample, Message, Sample
from fedllm.data.sources import DatasetSource
from fedllm.data.sources.builds import MANIFEST_FILE, build_key, file_sha256, read_build_manifest, say, staging
from fedllm.jsonl import atomic_write

__all__ = [
    "INPUT_KWARGS",
    "Built",
    "Drops",
    "InputSpec",
    "PublicSource",
    "Row",
    "Rows",
    "chat_turns",
    "check_choice",
    "conversation_sample",
    "first_exchange",
    "iter_rows",
    "publish_build",
    "rank_key",
    "select_clients",
    "text_field",
    "user_turns",
]

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
_SPLIT_WORDS = {"train", "test", "validation", "valid", "dev", "eval"}

INPUT_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        "data_files": None,  # None: the hub; else local file(s) or a directory (see the module docstring)
        "revision": None,  # hub revision when reading the hub
        "split": "train",
        "progress": True,
    }
)
_NOT_CONTENT = ("data_files", "revision", "split", "hub_id", "progress")  # keyed through InputSpec instead


# --------------------------------------------------------------------------------------------
# Input: where the rows come from, and its fingerprint
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One source row and where it is (file and line/row, or hub id and row index)."""

    where: str
    data: Mapping[str, Any]


_HASHES: dict[tuple[str, int, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime, inode) so build and is_built hash once."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo not in _HASHES:
        _HASHES[memo] = file_sha256(path)
    return _HASHES[memo]


def _normalize_files(value: Any, source: str) -> tuple[Path, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if not items:
        raise DataError(f"{source}: data_files is an empty list")
    paths = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise DataError(f"{source}: data_files entries must be paths, got {item!r}")
        path = Path(item).expanduser().resolve()
        if not path.exists():
            raise DataError(f"{source}: data file {item!s} does not exist")
        paths.append(path)
    return tuple(paths)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _split_tokens(rel: str) -> set[str]:
    return set(re.split(r"[-_./\\]+", rel.lower()))


def _folder_files(folder: Path, split: str, source: str) -> list[Path]:
    """The data files of a plain folder (a hub snapshot): those of `split` if any file names it."""
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and _base_suffix(p) in SUPPORTED_SUFFIXES
    )
    if not files:
        raise DataError(f"{source}: {folder}: no data files ({', '.join(SUPPORTED_SUFFIXES)}, optionally .gz) in this folder")
    rel = {p: str(p.relative_to(folder)) for p in files}
    chosen = [p for p in files if split.lower() in _split_tokens(rel[p])]
    if chosen:
        return chosen
    if any(_split_tokens(rel[p]) & _SPLIT_WORDS for p in files):
        raise DataError(f"{source}: {folder}: no file of split {split!r} among {sorted(rel.values())}")
    return files


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


@dataclass(frozen=True)
class InputSpec:
    """A builder's input: the hub dataset, or local files / directories."""

    source: str  # builder name, for messages
    hub_id: str
    config: str | None
    split: str
    revision: str | None
    data_files: tuple[Path, ...] | None

    def _entries(self) -> list[tuple[Path, list[Path]]]:
        """(given path, the files it stands for) in the given order; a saved dataset is hashed whole."""
        out = []
        for path in self.data_files or ():
            if path.is_dir():
                files = (sorted(p for p in path.rglob("*") if p.is_file()) if _is_saved_dataset(path)
                         else _folder_files(path, self.split, self.source))
            else:
                files = [path]
            out.append((path, files))
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the input, without the network: hub coordinates, or local file hashes."""
        if self.data_files is None:
            return {"hub_id": self.hub_id, "config": self.config, "split": self.split, "revision": self.revision}
        # content only: moving or renaming the files does not invalidate a build
        return {"split": self.split, "files": [[_file_sha256(f) for f in files] for _, files in self._entries()]}

    def describe(self) -> dict[str, Any]:
        """The manifest's account of the input."""
        if self.data_files is None:
            return {"hub_id": self.hub_id, "config": self.config, "split": self.split,
                    "revision": self.revision or "main (unpinned)"}
        files = []
        for given, members in self._entries():
            for f in members:
                files.append({"path": str(f), "bytes": f.stat().st_size, "sha256": _file_sha256(f)})
        return {"data_files": files, "split": self.split, "schema_of": self.hub_id}


def _hub_error(spec: InputSpec, exc: BaseException) -> DataError:
    reachable = not isinstance(exc, (ConnectionError, TimeoutError)) and "connect" not in str(exc).lower()
    what = "could not load" if reachable else "cannot reach the Hugging Face hub to load"
    return DataError(
        f"{spec.source}: {what} {spec.hub_id!r} (split {spec.split!r}"
        f"{', config ' + repr(spec.config) if spec.config else ''}"
        f"{', revision ' + repr(spec.revision) if spec.revision else ''}): {type(exc).__name__}: {exc}. "
        f"To build from local files instead, download the dataset where the hub is reachable (e.g. "
        f"`hf download --repo-type dataset {spec.hub_id} --local-dir DIR` (older: `huggingface-cli download`), "
        f"or `datasets.load_dataset(...).save_to_disk(DIR)`; gated datasets need their terms accepted and "
        f"`hf auth login`) and pass data_files=DIR (or a list of its JSON/JSONL/Parquet/CSV files) to the builder."
    )


def _load_hub(spec: InputSpec) -> Any:
    import datasets

    try:
        return datasets.load_dataset(spec.hub_id, name=spec.config, split=spec.split, revision=spec.revision)
    except Exception as exc:  # any failure (network, gated, missing) gets the local-files hint
        raise _hub_error(spec, exc) from exc


def _load_saved(path: Path, spec: InputSpec) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{spec.source}: {path}: not a readable save_to_disk directory: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if spec.split not in loaded:
            raise DataError(f"{spec.source}: {path}: no split {spec.split!r}; it has {sorted(loaded)}")
        loaded = loaded[spec.split]
    return loaded


# --------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------


def _read_text(path: Path, source: str) -> str:
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{source}: {path}: not a valid gzip file: {exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{source}: {path}: not valid UTF-8: undecodable byte 0x{data[e.start]:02x} at byte offset {e.start} "
            f"(line {line}); JSON/JSONL/CSV sources must be UTF-8 - re-encode the file "
            f"(e.g. `iconv -f LATIN1 -t UTF-8`)"
        ) from None


def _json_records(path: Path, source: str) -> Iterator[Row]:
    text = _read_text(path, source)
    stripped = text.lstrip()
    if _base_suffix(path) == ".json" and stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{source}: {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        for i, rec in enumerate(records):
            yield Row(f"{path}: record {i}", _as_object(rec, f"{path}: record {i}", source))
        return
    for lineno, line in enumerate(text.splitlines(), 1):  # JSON Lines
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{source}: {where}: invalid JSON Lines record at column {e.colno}: {e.msg} "
                "(a .json file must hold one list of records, or one record per line)"
            ) from None
        yield Row(where, _as_object(rec, where, source))


def _as_object(rec: Any, where: str, source: str) -> Mapping[str, Any]:
    if not isinstance(rec, dict):
        raise DataError(f"{source}: {where}: a row must be a JSON object, got {type(rec).__name__}")
    return rec


def csv_rows(path: Path, source: str, required: Sequence[str]) -> Iterator[Row]:
    """The rows of a CSV file with a header (UTF-8, BOM allowed); a missing required column is an error."""
    reader = csv.DictReader(io.StringIO(_read_text(path, source), newline=""))
    _check_columns(reader.fieldnames or [], required, str(path), source)
    for i, rec in enumerate(reader):
        yield Row(f"{path}: row {i + 2}", rec)  # line 1 is the header


def _parquet_records(path: Path, source: str, required: Sequence[str], optional: Sequence[str]) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:
        raise DataError(f"{source}: {path}: not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    _check_columns(names, required, str(path), source)
    columns = [c for c in (*required, *optional) if c in names]
    i = 0
    for batch in pf.iter_batches(columns=columns, batch_size=4096):
        for rec in batch.to_pylist():
            yield Row(f"{path}: row {i}", rec)
            i += 1


def _dataset_records(ds: Any, label: str, source: str, required: Sequence[str], optional: Sequence[str]) -> Iterator[Row]:
    _check_columns(ds.column_names, required, label, source)
    ds = ds.select_columns([c for c in (*required, *optional) if c in ds.column_names])
    for i, rec in enumerate(ds):
        yield Row(f"{label}: row {i}", rec)


def _check_columns(names: Iterable[str], required: Sequence[str], where: str, source: str) -> None:
    missing = [c for c in required if c not in set(names)]
    if missing:
        raise DataError(
            f"{source}: {where}: missing field(s) {missing} (the source's schema needs {list(required)}; "
            f"found {sorted(names)})"
        )


def iter_rows(
    spec: InputSpec, required: Sequence[str], optional: Sequence[str] = (), *, hub_dataset: Any = None
) -> Iterator[Row]:
    """The source's rows in order; a missing required field is a DataError naming it and the source.
    `hub_dataset`: the hub dataset already loaded (else it is loaded when `spec` reads the hub)."""
    if spec.data_files is None:
        ds = hub_dataset if hub_dataset is not None else _load_hub(spec)
        yield from _dataset_records(ds, f"{spec.hub_id} ({spec.split})", spec.source, required, optional)
        return
    for given, files in spec._entries():
        if given.is_dir() and _is_saved_dataset(given):
            yield from _dataset_records(_load_saved(given, spec), str(given), spec.source, required, optional)
            continue
        for path in files:
            kind = _base_suffix(path)
            if kind == ".parquet":
                yield from _parquet_records(path, spec.source, required, optional)
            elif kind == ".csv":
                yield from csv_rows(path, spec.source, required)
            elif kind in (".json", ".jsonl", ".ndjson"):
                for row in _json_records(path, spec.source):
                    _check_columns(row.data, required, row.where, spec.source)
                    yield row
            else:
                raise DataError(
                    f"{spec.source}: {path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)} "
                    "(optionally .gz) or a save_to_disk directory"
                )


# --------------------------------------------------------------------------------------------
# Field and conversation helpers
# --------------------------------------------------------------------------------------------


def text_field(row: Row, name: str, source: str) -> str | None:
    """The string field `name`: None when null or blank; any other type is a DataError."""
    value = row.data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{source}: {row.where}: field {name!r} must be a string, got {type(value).__name__}")
    return value if value.strip() else None


def chat_turns(row: Row, name: str, source: str) -> list[tuple[str, Any]] | None:
    """(role, content) of the chat list field `name` ({role, content, ...} dicts); None if it is null.
    A value that is not a list of such dicts is a DataError."""
    turns = row.data.get(name)
    if turns is None:
        return None
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"{source}: {row.where}: field {name!r} must be a list of turns, got {type(turns).__name__}")
    out = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise DataError(f"{source}: {row.where}: {name}[{t}] must be an object with 'role' and 'content'")
        out.append((turn["role"], turn["content"]))
    return out


def _usable(content: Any) -> bool:
    return isinstance(content, str) and bool(content.strip())


def first_exchange(turns: Sequence[tuple[str, Any]]) -> tuple[str, str] | str:
    """(first user message, the assistant reply that follows it), or the reason there is none:
    'malformed_conversation' (no user turn followed by an assistant turn) or 'empty_text'."""
    for i, (role, content) in enumerate(turns):
        if role == "user":
            if i + 1 >= len(turns) or turns[i + 1][0] != "assistant":
                return "malformed_conversation"
            reply = turns[i + 1][1]
            return (content, reply) if _usable(content) and _usable(reply) else "empty_text"
        if role != "system":
            return "malformed_conversation"
    return "malformed_conversation"


def conversation_sample(turns: Sequence[tuple[str, Any]]) -> InstructionSample | str:
    """The whole conversation as one multi-turn sample (a trailing unanswered user turn is cut), or
    the reason it cannot be one: 'malformed_conversation' (roles do not alternate user/assistant
    from a user turn) or 'empty_text' (a blank turn)."""
    turns = list(turns)
    if turns and turns[-1][0] == "user":
        turns = turns[:-1]
    if not turns:
        return "malformed_conversation"
    messages = []
    for i, (role, content) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            return "malformed_conversation"
        if not _usable(content):
            return "empty_text"
        messages.append(Message(role, content))
    return InstructionSample(tuple(messages))


def user_turns(row: Row, turns: Sequence[tuple[str, Any]]) -> int:
    """The number of user turns: the row's ``turn`` field where the source has one, else counted."""
    n = row.data.get("turn")
    return n if isinstance(n, int) and not isinstance(n, bool) else sum(1 for role, _ in turns if role == "user")


def check_choice(source: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{source}: {name} must be one of {list(choices)}, got {value!r}")


def rank_key(seed: int, *parts: Any) -> bytes:
    """Stable pseudo-random sort key (blake2b): the same order in every process and platform."""
    return hashlib.blake2b("\x00".join(map(str, (seed, *parts))).encode(), digest_size=16).digest()


# --------------------------------------------------------------------------------------------
# Drops and client selection
# --------------------------------------------------------------------------------------------


@dataclass
class Drops:
    """Rows that made no sample (by reason) and whole clients dropped (clients and samples by reason)."""

    rows: Counter[str] = field(default_factory=Counter)
    clients: dict[str, Counter[str]] = field(default_factory=dict)

    def row(self, reason: str, n: int = 1) -> None:
        self.rows[reason] += n

    def client(self, reason: str, samples: int) -> None:
        c = self.clients.setdefault(reason, Counter())
        c["clients"] += 1
        c["samples"] += samples

    def to_dict(self) -> dict[str, Any]:
        return {
            "dropped_rows": dict(sorted((k, v) for k, v in self.rows.items() if v)),
            "dropped_clients": {k: dict(sorted(v.items())) for k, v in sorted(self.clients.items())},
        }


def select_clients(
    groups: Mapping[str, Sequence[Any]], drops: Drops, *, min_samples: int = 1, max_clients: int | None = None
) -> dict[str, Any]:
    """Clients with at least `min_samples` items, the `max_clients` largest of them, ordered by size
    (descending) then id; every client left out is counted in `drops` by reason."""
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients must be >= 1, got {max_clients}")
    kept = []
    for cid, items in groups.items():
        if len(items) < min_samples:
            drops.client(f"below_min_samples_{min_samples}", len(items))
        else:
            kept.append(cid)
    kept.sort(key=lambda c: (-len(groups[c]), c))
    for cid in kept[max_clients:] if max_clients is not None else ():
        drops.client(f"beyond_max_clients_{max_clients}", len(groups[cid]))
    return {cid: groups[cid] for cid in kept[:max_clients]}


# --------------------------------------------------------------------------------------------
# Cache, manifest, publication
# --------------------------------------------------------------------------------------------


@dataclass
class Built:
    """What `construct` returns: clients (ordered) and per-client metadata for the manifest."""

    clients: dict[str, list[Sample]]
    client_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # more sections for the manifest (e.g. a classifier's confusion)


class Rows:
    """The rows of a build's input: iterable more than once (each pass reads the input again, so a
    builder can count in one pass and keep only what it selected in the next); `n` counts the rows
    of the first pass."""

    def __init__(self, read: Callable[[], Iterator[Row]]) -> None:
        self._read, self.n, self._passes = read, 0, 0

    def __iter__(self) -> Iterator[Row]:
        self._passes += 1
        first = self._passes == 1
        for row in self._read():
            if first:
                self.n += 1
            yield row


def format_summary(manifest: Mapping[str, Any], seconds: float | None = None, limit: int = 40) -> str:
    """Totals, per-client counts (the first `limit`), and drops, as printed after a build."""
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    clients = manifest["clients"]
    lines = [f"{manifest['dataset']}: {manifest['num_clients']} clients, {manifest['num_samples']} samples "
             f"(from {manifest['num_rows_read']} rows){took}"]
    sizes = sorted(c["num_samples"] for c in clients.values())
    lines.append(f"  samples per client: min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}")
    for cid, info in list(clients.items())[:limit]:
        lines.append(f"  {cid:<34} {info['num_samples']:>7}")
    if len(clients) > limit:
        lines.append(f"  ... {len(clients) - limit} more clients (see manifest.json)")
    rows = ", ".join(f"{k}={v}" for k, v in manifest["dropped_rows"].items()) or "none"
    lines.append(f"  dropped rows: {rows}")
    cl = ", ".join(f"{k}: {v['clients']} clients / {v['samples']} samples"
                   for k, v in manifest["dropped_clients"].items()) or "none"
    lines.append(f"  dropped clients: {cl}")
    return "\n".join(lines)


class PublicSource(DatasetSource):
    """Base of the builders of published federations (subclasses set the class attributes, the
    `default_kwargs` (which must include :data:`INPUT_KWARGS` and ``hub_id``) and `construct`)."""

    hub_id: ClassVar[str] = ""
    hub_config: ClassVar[str | None] = None
    builder_version: ClassVar[int] = 1  # bump when construct() changes output: it is part of the key
    required_fields: ClassVar[tuple[str, ...]] = ()
    optional_fields: ClassVar[tuple[str, ...]] = ()
    construction: ClassVar[str] = ""  # one paragraph for the manifest: how the federation is made

    def construct(self, rows: Rows, params: Mapping[str, Any], drops: Drops) -> Built:  # pragma: no cover
        """Clients from the rows, every row that makes no sample counted in `drops` by reason."""
        raise NotImplementedError

    # -- planning --------------------------------------------------------------------------

    def _plan(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], InputSpec, str]:
        params = self.resolve_kwargs(kwargs)
        spec = InputSpec(
            source=self.name,
            hub_id=str(params.get("hub_id") or self.hub_id),
            config=self.hub_config,
            split=str(params["split"]),
            revision=params["revision"],
            data_files=_normalize_files(params["data_files"], self.name),
        )
        blob = {
            "builder": self.name,
            "version": self.builder_version,
            "params": self.content_params(params),
            "input": spec.fingerprint(),
        }
        return params, spec, build_key(blob)

    @staticmethod
    def content_params(params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters that change what is built (the input is keyed separately)."""
        return {k: v for k, v in sorted(params.items()) if k not in _NOT_CONTENT}

    @property
    def data_file_name(self) -> str:
        return f"{self.name}.json"

    # -- DatasetSource interface ----------------------------------------------------------------

    def is_built(self, cache_dir: Path, **kwargs: Any) -> bool:
        """Whether a complete build for these arguments and this input is cached (no network; a
        missing local input file just means False)."""
        try:
            _, _, key = self._plan(kwargs)
        except DataError:
            return False
        return read_build_manifest(self.dataset_dir(cache_dir) / key, key) is not None

    def build(self, cache_dir: Path, **kwargs: Any) -> Path:
        """Build or reuse <cache_dir>/datasets/<name>/<key>/<name>.json (+ manifest.json); returns the
        data file. Prints clients, samples, per-client counts and drops when `progress` is set."""
        params, spec, key = self._plan(kwargs)
        progress = bool(params["progress"])
        root = self.dataset_dir(cache_dir)
        final = root / key
        if read_build_manifest(final, key) is not None:
            say(progress, f"{self.name}: using cached build {final}")
            return final / self.data_file_name
        start = time.perf_counter()
        where = spec.hub_id if spec.data_files is None else ", ".join(map(str, spec.data_files))
        say(progress, f"{self.name}: reading {where} -> {final}")
        drops = Drops()
        loaded = _load_hub(spec) if spec.data_files is None else None  # once, for every pass
        rows = Rows(lambda: iter_rows(spec, self.required_fields, self.optional_fields, hub_dataset=loaded))
        built = self.construct(rows, params, drops)
        if not built.clients:
            raise DataError(f"{self.name}: no client passes the filters (read {rows.n} rows); {drops.to_dict()}")
        manifest = {
            "dataset": self.name,
            "builder_version": self.builder_version,
            "cache_key": key,
            "construction": self.construction,
            "source": spec.describe(),
            "params": self.content_params(params),
            "data_file": self.data_file_name,
            "content_sha256": None,
            "num_rows_read": rows.n,
            "num_clients": len(built.clients),
            "num_samples": sum(map(len, built.clients.values())),
            "clients": {cid: {"num_samples": len(s), **built.client_meta.get(cid, {})}
                        for cid, s in built.clients.items()},
            **drops.to_dict(),
            **built.report,
        }
        path = publish_build(root, key, built.clients, manifest, self.data_file_name)
        say(progress, format_summary(manifest, seconds=time.perf_counter() - start))
        return path


def publish_build(root: Path, key: str, clients: Mapping[str, list[Sample]], manifest: dict[str, Any], data_name: str) -> Path:
    """Write data file + manifest (last, with the data file's sha256 filled in) into a temporary
    sibling directory, then rename it to root/key; an existing valid build under the key wins."""
    with staging(root, key) as tmp:
        data = write_fedllm_bench(clients, tmp / data_name)
        manifest["content_sha256"] = file_sha256(data)
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic_write(tmp / MANIFEST_FILE, lambda f: f.write(text))
    return root / key / data_name
