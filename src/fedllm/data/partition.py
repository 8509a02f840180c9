"""Splitters: turn a centralized list of records into a federation (client id -> item indices).

Every splitter is a small frozen dataclass whose fields are its parameters, validated on
construction (a bad value is a ValueError naming the parameter). ``split(items, label=..., seed=...)``
returns a :class:`Partition`; it draws only from ``numpy.random.default_rng(seed)``, so the same
items, parameters and seed always give the same partition. Registry names (:data:`SPLITTERS`):

* ``natural`` — one client per value of a field (``key``), clients named by the value;
  ``min_samples`` drops smaller clients (reported in ``Partition.dropped``).
* ``meta`` — meta-information: ``clients_per_value`` clients per value of ``key`` (an int, or a
  mapping value -> int); a value's items are shuffled and split evenly among its clients.
* ``iid`` — uniform: a random permutation cut into ``num_clients`` parts whose sizes differ by <= 1.
* ``dirichlet`` — label skew: for each label, proportions ~ Dir(``alpha``) over the clients
  (Hsu et al. 2019; FedML/flwr-datasets ``DirichletPartitioner``); redrawn until every client has
  ``min_size`` items, at most ``max_retries`` times. ``balance`` stops giving a label's items to
  clients that already hold ``N / num_clients`` (the FedML trick, also in Shepherd).
* ``shards`` — pathological non-IID (McMahan et al. 2017; FedIT/Shepherd): items sorted by label are
  cut into ``num_clients * shards_per_client`` shards and each client gets ``shards_per_client``
  random shards. With ``cut_at_labels`` (default) shards never straddle two labels, so a client sees
  at most ``shards_per_client`` labels; ``cut_at_labels=False`` cuts the sorted list into equal
  shards exactly as Shepherd's ``np.array_split`` does (a shard at a label boundary holds two labels).
* ``quantity`` — quantity skew: a random permutation (labels stay IID) cut at proportions
  ~ Dir(``alpha``) over the clients (NIID-Bench's quantity-based skew), redrawn until every client has
  ``min_size`` items.

The label of an item (``label=``, and ``key=`` of the key-based splitters) is a field name — a mapping
key or an attribute — or a callable. Label-based splitters need it; the others use it, when given,
only for :meth:`Partition.report`, :meth:`Partition.summary` and :meth:`Partition.plot`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np

from fedllm.registry import Registry

__all__ = [
    "SPLITTERS",
    "DirichletSplitter",
    "IIDSplitter",
    "LabelSpec",
    "MetaSplitter",
    "NaturalKeySplitter",
    "Partition",
    "QuantitySkewSplitter",
    "ShardSplitter",
    "Splitter",
    "apply_partition",
    "get_splitter",
]

LabelSpec = Union[str, Callable[[Any], Hashable]]
"""A field name (mapping key or attribute) or a callable item -> hashable label."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _sorted_unique(values: Iterable[Hashable]) -> list[Hashable]:
    """Distinct values in sorted order (by type name and text when they do not compare)."""
    distinct = set(values)
    try:
        return sorted(distinct)  # type: ignore[type-var]
    except TypeError:
        return sorted(distinct, key=lambda v: (type(v).__name__, str(v)))


def _describe(value: Any) -> Any:
    """A JSON-friendly rendering of a parameter value (callables by name)."""
    if callable(value):
        return f"<callable {getattr(value, '__qualname__', type(value).__name__)}>"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read(items: Sequence[Any], spec: LabelSpec, param: str) -> list[Hashable]:
    """The value of `spec` for every item; a missing field is a ValueError naming the item."""
    if callable(spec):
        values = [spec(item) for item in items]
    else:
        values = []
        for i, item in enumerate(items):
            try:
                values.append(item[spec] if isinstance(item, Mapping) else getattr(item, spec))
            except (KeyError, AttributeError):
                raise ValueError(f"{param}={spec!r}: item {i} has no field {spec!r}") from None
    for i, v in enumerate(values):
        if not isinstance(v, Hashable):
            raise ValueError(
                f"{param}={_describe(spec)!r}: item {i} has an unhashable value of type {type(v).__name__}"
            )
    return values


def _check_spec(owner: str, param: str, spec: Any) -> None:
    if not (callable(spec) or (isinstance(spec, str) and spec)):
        raise ValueError(f"{owner}: {param} must be a field name or a callable, got {spec!r}")


def _check_int(owner: str, param: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {param} must be an integer >= {minimum}, got {value!r}")


def _check_positive(owner: str, param: str, value: Any) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{owner}: {param} must be a finite number > 0, got {value!r}")


def _check_bool(owner: str, param: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {param} must be True or False, got {value!r}")


def _numbered(n: int) -> list[str]:
    """client_0 .. client_{n-1}, zero-padded so that they sort in order."""
    width = len(str(n - 1))
    return [f"client_{i:0{width}d}" for i in range(n)]


def _cut(indices: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """`indices` cut into len(proportions) consecutive parts at the floored cumulative proportions."""
    cuts = (np.cumsum(proportions) * len(indices)).astype(int)[:-1]
    return np.split(indices, cuts)


def _gini(sizes: Sequence[int]) -> float:
    x = np.sort(np.asarray(sizes, dtype=float))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(2 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


# --------------------------------------------------------------------------------------------
# Partition
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """A federation of `num_items` items: client id -> sorted item indices, in client order.

    `labels` holds every item's label when the split had one (for reports), `dropped` the number of
    items left out per reason, `info` splitter-specific facts (retries taken, dropped clients, ...).
    Every index in range(num_items) is in exactly one client or in `dropped_indices`.
    """

    splitter: str
    params: dict[str, Any]
    seed: int
    num_items: int
    indices: dict[str, list[int]]
    labels: tuple[Hashable, ...] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_indices: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen = np.zeros(self.num_items, dtype=np.int64)
        for idx in self.indices.values():
            np.add.at(seen, np.asarray(idx, dtype=np.int64), 1)
        np.add.at(seen, np.asarray(self.dropped_indices, dtype=np.int64), 1)
        if not (seen == 1).all():
            raise AssertionError(f"{self.splitter}: an item is assigned {int(seen.max())} times or not at all")
        if sum(self.dropped.values()) != len(self.dropped_indices):
            raise AssertionError(f"{self.splitter}: dropped counts do not match the dropped items")
        if self.labels is not None and len(self.labels) != self.num_items:
            raise AssertionError(f"{self.splitter}: {len(self.labels)} labels for {self.num_items} items")

    @property
    def client_ids(self) -> list[str]:
        return list(self.indices)

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    def sizes(self) -> dict[str, int]:
        return {cid: len(idx) for cid, idx in self.indices.items()}

    def label_names(self) -> list[Hashable]:
        """The labels of the assigned items, sorted ([] without labels)."""
        if self.labels is None:
            return []
        return _sorted_unique(self.labels[i] for idx in self.indices.values() for i in idx)

    def label_counts(self) -> dict[str, Counter[Hashable]]:
        """Client id -> Counter of labels (empty Counters without labels)."""
        if self.labels is None:
            return {cid: Counter() for cid in self.indices}
        return {cid: Counter(self.labels[i] for i in idx) for cid, idx in self.indices.items()}

    def _matrix(self) -> tuple[list[Hashable], np.ndarray]:
        """(labels, clients x labels count matrix)."""
        names = self.label_names()
        pos = {name: j for j, name in enumerate(names)}
        counts = np.zeros((self.num_clients, len(names)), dtype=np.int64)
        for c, counter in enumerate(self.label_counts().values()):
            for name, n in counter.items():
                counts[c, pos[name]] = n
        return names, counts

    def report(self) -> dict[str, dict[str, Any]]:
        """Client id -> {"size": n, "labels": {label text: count}} (labels in sorted order, zeros left
        out; an empty dict without labels)."""
        names, counts = self._matrix()
        return {
            cid: {"size": len(self.indices[cid]), "labels": {str(names[j]): int(n) for j, n in enumerate(row) if n}}
            for cid, row in zip(self.indices, counts)
        }

    def summary(self) -> dict[str, Any]:
        """Measurable skew: size statistics (CV = std/mean, Gini), and with labels the mean,
        size-weighted mean and max total-variation distance between each non-empty client's label
        distribution and the distribution over all assigned items, and labels per client."""
        sizes = np.array([len(idx) for idx in self.indices.values()], dtype=float)
        mean = float(sizes.mean()) if len(sizes) else 0.0
        out: dict[str, Any] = {
            "num_clients": self.num_clients,
            "num_items": self.num_items,
            "num_assigned": int(sizes.sum()),
            "num_dropped": len(self.dropped_indices),
            "size_min": int(sizes.min()) if len(sizes) else 0,
            "size_max": int(sizes.max()) if len(sizes) else 0,
            "size_mean": mean,
            "size_std": float(sizes.std()) if len(sizes) else 0.0,
            "size_cv": float(sizes.std() / mean) if mean else 0.0,
            "size_gini": _gini(sizes.tolist()),
        }
        names, counts = self._matrix()
        if names:
            nonempty = counts.sum(axis=1) > 0
            dist = counts[nonempty] / counts[nonempty].sum(axis=1, keepdims=True)
            glob = counts.sum(axis=0) / counts.sum()
            tv = 0.5 * np.abs(dist - glob).sum(axis=1)
            per_client = (counts > 0).sum(axis=1)
            out.update(
                num_labels=len(names),
                mean_tv=float(tv.mean()),
                weighted_tv=float(np.average(tv, weights=sizes[nonempty])),
                max_tv=float(tv.max()),
                mean_labels_per_client=float(per_client[nonempty].mean()),
                max_labels_per_client=int(per_client.max()),
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (no indices): splitter, params, seed, drops, summary, report."""
        return {
            "splitter": self.splitter,
            "params": self.params,
            "seed": self.seed,
            "dropped": dict(self.dropped),
            "info": _describe(self.info),
            "summary": self.summary(),
            "clients": self.report(),
        }

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """A PNG of one horizontal bar per client, stacked by label (like Shepherd's Figure 2a);
        written atomically with matplotlib's Agg canvas (no pyplot state). Returns the path."""
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        from fedllm.jsonl import atomic_write

        names, counts = self._matrix()
        if not names:
            names, counts = ["items"], np.array([[len(i)] for i in self.indices.values()], dtype=np.int64)
        n = self.num_clients
        cmap = colormaps["tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "viridis"]
        colors = [cmap(j if len(names) <= 20 else j / max(len(names) - 1, 1)) for j in range(len(names))]
        fig = Figure(figsize=(10, min(max(3.0, 0.16 * n + 1.6), 60.0)), dpi=100)
        ax = fig.subplots()
        y = np.arange(n)
        left = np.zeros(n)
        for j, name in enumerate(names):
            ax.barh(y, counts[:, j], left=left, height=0.8, color=colors[j], label=str(name), linewidth=0)
            left += counts[:, j]
        step = max(1, math.ceil(n / 60))  # at most ~60 client names on the axis
        ax.set_yticks(y[::step], self.client_ids[::step], fontsize=7 if n > 20 else 9)
        ax.set_ylim(n - 0.5, -0.5)
        ax.margins(x=0.01)
        ax.set_xlabel("samples")
        ax.set_ylabel("client")
        ax.set_title(title or f"{self.splitter} {self.params} seed={self.seed}", fontsize=9)
        if len(names) > 1 or self.labels is not None:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")
        return Path(path)


def apply_partition(partition: Partition, items: Sequence[Any]) -> dict[str, list[Any]]:
    """Client id -> that client's items (in their original order)."""
    if len(items) != partition.num_items:
        raise ValueError(f"the partition is of {partition.num_items} items, got {len(items)}")
    return {cid: [items[i] for i in idx] for cid, idx in partition.indices.items()}


# --------------------------------------------------------------------------------------------
# Splitters
# --------------------------------------------------------------------------------------------


_Assignment = tuple[dict[str, list[int]], dict[str, list[int]], dict[str, Any]]
"""(client -> indices, drop reason -> indices, info)."""


SPLITTERS: Registry[type[Splitter]] = Registry("splitter")
"""Registry name -> splitter class (one ``@SPLITTERS.register(name)`` line per splitter)."""


@dataclass(frozen=True)
class Splitter:
    """Base of splitters: subclasses are frozen dataclasses of their parameters and implement `_assign`."""

    name: ClassVar[str] = ""
    needs_label: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        return {f.name: _describe(getattr(self, f.name)) for f in fields(self)}

    def split(self, items: Sequence[Any], *, label: LabelSpec | None = None, seed: int = 0) -> Partition:
        """Partition `items`; `label` (field name or callable) is required by label-based splitters."""
        _check_int(self.name, "seed", seed, 0)
        if label is not None:
            _check_spec(self.name, "label", label)
        if self.needs_label and label is None:
            raise ValueError(f"{self.name}: this splitter needs label= (a field name or a callable)")
        labels = _read(items, label, "label") if label is not None else None
        clients, dropped, info = self._assign(items, labels, np.random.default_rng(int(seed)))
        dropped_indices = tuple(sorted(i for idx in dropped.values() for i in idx))
        return Partition(
            splitter=self.name,
            params=self.params(),
            seed=int(seed),
            num_items=len(items),
            indices={cid: sorted(int(i) for i in idx) for cid, idx in clients.items()},
            labels=tuple(labels) if labels is not None else self._default_labels(items),
            dropped={reason: len(idx) for reason, idx in dropped.items() if idx},
            dropped_indices=dropped_indices,
            info=info,
        )

    __call__ = split

    def _default_labels(self, items: Sequence[Any]) -> tuple[Hashable, ...] | None:
        return None

    def _assign(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> _Assignment:
        raise NotImplementedError

    def _check_count(self, n: int, minimum_per_client: int = 1) -> None:
        num_clients = getattr(self, "num_clients")
        if num_clients * minimum_per_client > n:
            raise ValueError(
                f"{self.name}: num_clients={num_clients} needs at least {num_clients * minimum_per_client} "
                f"items, got {n}"
            )


def _groups(values: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    """Value -> indices holding it, values in sorted order."""
    by: dict[Hashable, list[int]] = {}
    for i, v in enumerate(values):
        by.setdefault(v, []).append(i)
    return {v: np.asarray(by[v], dtype=np.int64) for v in _sorted_unique(by)}


@dataclass(frozen=True)
class _KeySplitter(Splitter):
    """Shared by the key-based splitters: the key also serves as the report label by default."""

    key: LabelSpec

    def _default_labels(self, items: Sequence[Any]) -> tuple[Hashable, ...] | None:
        return tuple(_read(items, self.key, "key"))


@SPLITTERS.register("natural")
@dataclass(frozen=True)
class NaturalKeySplitter(_KeySplitter):
    """One client per value of `key`, named str(value), in sorted value order; items whose key is
    None are dropped ("missing_key"), clients with fewer than `min_samples` items too
    ("below_min_samples"; their names and sizes in info["dropped_clients"])."""

    min_samples: int = 1

    def __post_init__(self) -> None:
        _check_spec(self.name, "key", self.key)
        _check_int(self.name, "min_samples", self.min_samples, 1)

    def _assign(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> _Assignment:
        keys = _read(items, self.key, "key")
        clients: dict[str, list[int]] = {}
        dropped: dict[str, list[int]] = {"missing_key": [], "below_min_samples": []}
        small: dict[str, int] = {}
        for value, idx in _groups(keys).items():
            if value is None:
                dropped["missing_key"] += idx.tolist()
                continue
            cid = str(value)
            if cid in clients:
                raise ValueError(f"{self.name}: two key values are both named {cid!r}")
            if len(idx) < self.min_samples:
                dropped["below_min_samples"] += idx.tolist()
                small[cid] = len(idx)
            else:
                clients[cid] = idx.tolist()
        return clients, dropped, {"dropped_clients": small}


@SPLITTERS.register("meta")
@dataclass(frozen=True)
class MetaSplitter(_KeySplitter):
    """`clients_per_value` clients per value of `key` (an int for all values or a mapping value ->
    int covering every value). A value with one client gives a client named str(value); with k > 1
    they are "<value>_0" .. "<value>_{k-1}", and its items are shuffled and cut into k parts whose
    sizes differ by at most one."""

    clients_per_value: int | Mapping[Any, int] = 1

    def __post_init__(self) -> None:
        _check_spec(self.name, "key", self.key)
        per = self.clients_per_value
        if isinstance(per, Mapping):
            for value, k in per.items():
                _check_int(self.name, f"clients_per_value[{value!r}]", k, 1)
        else:
            _check_int(self.name, "clients_per_value", per, 1)

    def _assign(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> _Assignment:
        groups = _groups(_read(items, self.key, "key"))
        per = self.clients_per_value
        if isinstance(per, Mapping):
            missing = [v for v in groups if v not in per]
            if missing:
                raise ValueError(f"{self.name}: clients_per_value has no entry for key value(s) {missing}")
        clients: dict[str, list[int]] = {}
        for value, idx in groups.items():
            k = int(per[value] if isinstance(per, Mapping) else per)
            if k > len(idx):
                raise ValueError(
                    f"{self.name}: clients_per_value={k} for {value!r} exceeds its {len(idx)} items"
                )
            names = [str(value)] if k == 1 else [f"{value}_{j}" for j in range(k)]
            for cid, part in zip(names, np.array_split(rng.permutation(idx), k)):
                if cid in clients:
                    raise ValueError(f"{self.name}: client name {cid!r} is produced twice")
                clients[cid] = part.tolist()
        return clients, {}, {}


@SPLITTERS.register("iid")
@dataclass(frozen=True)
class IIDSplitter(Splitter):
    """A uniform random permutation cut into `num_clients` parts of sizes differing by at most one."""

    num_clients: int

    def __post_init__(self) -> None:
        _check_int(self.name, "num_clients", self.num_clients, 1)

    def _assign(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> _Assignment:
        self._check_count(len(items))
        parts = np.array_split(rng.permutation(len(items)), self.num_clients)
        return dict(zip(_numbered(self.num_clients), (p.tolist() for p in parts))), {}, {}


@dataclass(frozen=True)
class _RetrySplitter(Splitter):
    """Shared by the Dirichlet-based splitters: redraw until every client has `min_size` items."""

    num_clients: int
    alpha: float
    min_size: int
    max_retries: int

    def __post_init__(self) -> None:
        _check_int(self.name, "num_clients", self.num_clients, 1)
        _check_positive(self.name, "alpha", self.alpha)
        _check_int(self.name, "min_size", self.min_size, 0)
        _check_int(self.name, "max_retries", self.max_retries, 1)

    def _draw(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def _assign(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> _Assignment:
        self._check_count(len(items), self.min_size)
        smallest = 0
        for attempt in range(1, self.max_retries + 1):
            parts = self._draw(items, labels, rng)
            smallest = min(map(len, parts))
            if smallest >= self.min_size:
                return dict(zip(_numbered(self.num_clients), parts)), {}, {"attempts": attempt}
        raise ValueError(
            f"{self.name}: no draw gave every client min_size={self.min_size} items in max_retries="
            f"{self.max_retries} attempts (the last draw's smallest client had {smallest}); lower min_size, "
            f"use fewer clients, raise alpha (={self.alpha}) or max_retries"
        )


@SPLITTERS.register("dirichlet")
@dataclass(frozen=True)
class DirichletSplitter(_RetrySplitter):
    """Label skew: for each label (sorted), its shuffled items are cut among the clients at proportions
    ~ Dir(alpha); with `balance`, clients already holding N/num_clients items get no more (unless all
    do). Client sizes are unequal. Smaller alpha, more skew."""

    alpha: float = 0.5
    min_size: int = 10
    max_retries: int = 100
    balance: bool = False
    needs_label: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_bool(self.name, "balance", self.balance)

    def _draw(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> list[list[int]]:
        assert labels is not None
        parts: list[list[int]] = [[] for _ in range(self.num_clients)]
        cap = len(items) / self.num_clients
        for idx in _groups(labels).values():
            p = rng.dirichlet(np.full(self.num_clients, float(self.alpha)))
            if self.balance:
                open_ = np.array([len(part) < cap for part in parts])
                if open_.any():
                    p = p * open_
            total = p.sum()
            p = p / total if total > 0 else np.full(self.num_clients, 1.0 / self.num_clients)
            for part, piece in zip(parts, _cut(rng.permutation(idx), p)):
                part += piece.tolist()
        return parts


@SPLITTERS.register("quantity")
@dataclass(frozen=True)
class QuantitySkewSplitter(_RetrySplitter):
    """Quantity skew with IID labels: a random permutation cut at proportions ~ Dir(alpha) over the
    clients (one draw for the whole set). Smaller alpha, more unequal sizes."""

    alpha: float = 0.5
    min_size: int = 1
    max_retries: int = 100

    def _draw(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> list[list[int]]:
        p = rng.dirichlet(np.full(self.num_clients, float(self.alpha)))
        return [piece.tolist() for piece in _cut(rng.permutation(len(items)), p)]


def _shards_per_label(counts: Sequence[int], total: int) -> list[int]:
    """How many of `total` shards each label gets: at least one, at most its count, otherwise
    proportional to its count by largest remainder."""
    n = sum(counts)
    quota = [total * c / n for c in counts]
    alloc = [min(c, max(1, math.floor(q))) for c, q in zip(counts, quota)]
    while sum(alloc) < total:
        j = max((j for j in range(len(counts)) if alloc[j] < counts[j]), key=lambda j: quota[j] - alloc[j])
        alloc[j] += 1
    while sum(alloc) > total:
        j = min((j for j in range(len(counts)) if alloc[j] > 1), key=lambda j: quota[j] - alloc[j])
        alloc[j] -= 1
    return alloc


@SPLITTERS.register("shards")
@dataclass(frozen=True)
class ShardSplitter(Splitter):
    """Pathological non-IID: `num_clients * shards_per_client` label-sorted shards, `shards_per_client`
    random ones per client. `cut_at_labels` (default) gives each label a share of the shards
    proportional to its size (at least one) so that a shard holds one label; False cuts the sorted
    list into near-equal shards like Shepherd. Within a label the order is random."""

    num_clients: int
    shards_per_client: int = 2
    cut_at_labels: bool = True
    needs_label: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_int(self.name, "num_clients", self.num_clients, 1)
        _check_int(self.name, "shards_per_client", self.shards_per_client, 1)
        _check_bool(self.name, "cut_at_labels", self.cut_at_labels)

    def _assign(self, items: Sequence[Any], labels: list[Hashable] | None, rng: np.random.Generator) -> _Assignment:
        assert labels is not None
        total = self.num_clients * self.shards_per_client
        if total > len(items):
            raise ValueError(
                f"{self.name}: num_clients * shards_per_client = {total} shards exceed the {len(items)} items"
            )
        groups = [rng.permutation(idx) for idx in _groups(labels).values()]
        if self.cut_at_labels:
            if len(groups) > total:
                raise ValueError(
                    f"{self.name}: {len(groups)} labels need at least as many shards, but num_clients * "
                    f"shards_per_client = {total}; use more clients/shards or cut_at_labels=False"
                )
            alloc = _shards_per_label([len(g) for g in groups], total)
            shards = [s for g, k in zip(groups, alloc) for s in np.array_split(g, k)]
        else:
            shards = np.array_split(np.concatenate(groups), total)
        order = rng.permutation(total)
        k = self.shards_per_client
        parts = [np.concatenate([shards[s] for s in order[c * k:(c + 1) * k]]).tolist()
                 for c in range(self.num_clients)]
        return dict(zip(_numbered(self.num_clients), parts)), {}, {"shard_sizes": sorted({len(s) for s in shards})}


def get_splitter(name: str, **params: Any) -> Splitter:
    """The splitter registered as `name` with these parameters; an unknown name, unknown or missing
    parameter or bad value is a ValueError that lists what is known or names the parameter."""
    cls = SPLITTERS.lookup(name)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"splitter {name!r} has no parameter(s) {unknown}; known: {known}")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"splitter {name!r} needs parameter(s) {missing}")
    return cls(**params)

