"""Groups of clients for grouped federations: by a client attribute (language, category, domain …),
by FedLLM-Bench's language presets, or by a mapping the user gives.

FedLLM-Bench (Table 6) compares FedSamLang (clients of the same language federate) with FedSimLang
(clients of a language family federate). Its five families are :data:`FAMILIES`; a language outside
them (Fed-Aya's Telugu, say) forms a family of its own, i.e. it federates as under FedSamLang.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedllm.data.schema import DataError, FederatedDataset

FAMILIES: dict[str, tuple[str, ...]] = {
    "arabic-persian-urdu": ("Standard Arabic", "Urdu", "Iranian Persian"),
    "romance": ("French", "Italian", "Spanish", "Portuguese"),
    "germanic": ("English", "German"),
    "slavic": ("Russian", "Polish", "Ukrainian"),
    "east-asian": ("Simplified Chinese", "Traditional Chinese", "Japanese", "Korean"),
}

PRESETS = {"fedsamlang": "a group per language", "fedsimlang": "a group per language family (FedLLM-Bench's five; "
                                                               "a language outside them is a family of its own)"}


def majority(counts: Mapping[str, int]) -> str:
    """The most common value (ties: the first by name)."""
    return min(counts, key=lambda v: (-counts[v], v))


def record_attribute(path: Path, attr: str) -> dict[str, str]:
    """Per client of a FedLLM-Bench file, the most common value of the records' field ``attr`` (ties:
    the first by name); clients whose records lack it are left out."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    clients = data if isinstance(data, dict) else {Path(path).stem: data}
    out = {}
    for cid, records in clients.items():
        counts = Counter(str(r[attr]) for r in records if isinstance(r, dict) and r.get(attr) not in (None, ""))
        if counts:
            out[cid] = majority(counts)
    return out


def client_attribute(dataset: FederatedDataset, ids: Sequence[str], attr: str) -> dict[str, str]:
    """Each client's value of ``attr``: ``client`` is the id itself; else the build's client
    attributes (its manifest), or the records' field of that name in a FedLLM-Bench file."""
    if attr == "client":
        return {c: c for c in ids}
    known = dataset.meta.get("client_attributes") or {}
    values = {c: known.get(c, {}).get(attr) for c in ids}
    names = sorted({k for info in known.values() for k in info} | {"client"})
    if all(v is None for v in values.values()) and dataset.meta.get("source"):  # a field of the records?
        values = record_attribute(Path(dataset.meta["source"]), attr)
        names.append("a field of the records")
    missing = [c for c in ids if values.get(c) is None]
    if missing:
        raise DataError(f"{dataset.name}: {len(missing)} of {len(ids)} clients have no attribute {attr!r} (e.g. "
                        f"{missing[:3]}); group by one of: {', '.join(names)}, or give groups.mapping")
    return {c: str(values[c]) for c in ids}


def language_family(language: str, families: Mapping[str, Sequence[str]] | None = None) -> str:
    """The family of a language (case-insensitive); a language in no family is its own family."""
    for family, members in (families or FAMILIES).items():
        if language.casefold() in {m.casefold() for m in members}:
            return family
    return language


def load_mapping(mapping: Mapping[str, str] | str) -> dict[str, str]:
    """A client -> group mapping, given inline or as a YAML/JSON file."""
    if isinstance(mapping, str):
        path = Path(mapping).expanduser()
        if not path.is_file():
            raise DataError(f"groups.mapping: no such file {path}")
        try:
            mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DataError(f"groups.mapping {path}: not valid YAML/JSON ({e})") from None
        if not isinstance(mapping, Mapping):
            raise DataError(f"groups.mapping {path}: expected a mapping of client id -> group")
    return {str(k): str(v) for k, v in mapping.items()}


def resolve_groups(dataset: FederatedDataset, ids: Sequence[str], by: str | None = None,
                   mapping: Mapping[str, str] | str | None = None,
                   families: Mapping[str, Sequence[str]] | None = None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(group -> its clients, in the order groups first appear among ``ids``; client -> the attribute
    value it was grouped by)."""
    if mapping is not None:
        values = load_mapping(mapping)
        missing = [c for c in ids if c not in values]
        if missing:
            raise DataError(f"groups.mapping has no group for {len(missing)} client(s) (e.g. {missing[:3]})")
        group_of = {c: values[c] for c in ids}
    elif by in PRESETS:
        values = client_attribute(dataset, ids, "language")
        group_of = values if by == "fedsamlang" else {c: language_family(v, families) for c, v in values.items()}
    elif by:
        values = client_attribute(dataset, ids, by)
        group_of = values
    else:
        raise ValueError("resolve_groups needs `by` or `mapping`")
    groups: dict[str, list[str]] = {}
    for c in ids:
        groups.setdefault(group_of[c], []).append(c)
    return groups, {c: values[c] for c in ids}


def describe_rule(by: str | None, mapping: Any) -> str:
    if mapping is not None:
        return "groups.mapping"
    return f"{by}: {PRESETS[by]}" if by in PRESETS else f"by the client attribute {by!r}"
