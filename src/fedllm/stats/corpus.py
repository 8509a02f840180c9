"""The federation as the statistics see it: every sample of every client (no train/test split), the
problems found while reading it, client languages where known, and a content hash.

A FedLLM-Bench file (or a registered source's built file) is read whole and in file order. A file
the strict loader refuses is read again leniently so that the report can name every problem: a
record that does not parse is skipped and listed, an empty client is kept with 0 samples.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedllm.data.fedllm_bench import check_unicode, parse_record, read_fedllm_bench, record_from_sample, sample_kind
from fedllm.data.schema import DataError, FederatedDataset, InstructionSample, Message, PreferenceSample, Sample
from fedllm.hashing import stable_hash

MANIFEST = "manifest.json"


@dataclass
class Federation:
    """client id -> all its samples (file order), plus what the statistics report besides numbers."""

    name: str
    clients: dict[str, list[Sample]]
    source: str | None = None
    problems: list[str] = field(default_factory=list)
    languages: dict[str, Counter[str]] = field(default_factory=dict)  # clients with a known language only
    language_source: str | None = None
    fixups: dict[str, Counter[str]] = field(default_factory=dict)  # per client: records read as FedLLM-Bench reads them

    @property
    def kinds(self) -> dict[str, str]:
        """client id -> 'instruction' | 'preference' (clients without samples are left out)."""
        return {cid: sample_kind(s[0]) for cid, s in self.clients.items() if s}

    def content_hash(self) -> str:
        """128-bit sha256 prefix of the clients' records in canonical JSON (independent of file formatting)."""
        return stable_hash([[cid, [record_from_sample(s) for s in samples]] for cid, samples in self.clients.items()])


# --------------------------------------------------------------------------------------------
# Texts of a sample
# --------------------------------------------------------------------------------------------


def instruction_text(sample: Sample) -> str:
    """The first user message (instruction data) or the last user message of the prompt (preference)."""
    return sample.instruction


def response_text(sample: Sample) -> str:
    """The first assistant message (instruction data) or the chosen reply (preference)."""
    return sample.response if isinstance(sample, InstructionSample) else sample.chosen


def scored_replies(sample: Sample) -> list[tuple[str, tuple[Message, ...], str]]:
    """(part, context, reply) of the replies that IFD scores: for instruction data the first assistant
    message given the conversation before it, for preference data the chosen and the rejected reply
    given the prompt."""
    if isinstance(sample, PreferenceSample):
        return [("chosen", sample.prompt, sample.chosen), ("rejected", sample.prompt, sample.rejected)]
    first = next(i for i, m in enumerate(sample.messages) if m.role == "assistant")
    return [("response", sample.messages[:first], sample.messages[first].content)]


# --------------------------------------------------------------------------------------------
# Building a Federation
# --------------------------------------------------------------------------------------------


def _count_languages(value: Any) -> Counter[str] | None:
    """A language annotation -> counts: 'en', ['en', 'fr'] or {'en': 12, 'fr': 3}."""
    if isinstance(value, str) and value.strip():
        return Counter({value.strip(): 1})
    if isinstance(value, Mapping):
        counts = Counter({str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and v > 0})
        return counts or None
    if isinstance(value, (list, tuple)):
        counts = Counter(str(v) for v in value if isinstance(v, str) and v.strip())
        return counts or None
    return None


def _meta_languages(meta: Mapping[str, Any]) -> Counter[str] | None:
    for key in ("languages", "language", "lang"):
        if key in meta:
            found = _count_languages(meta[key])
            if found:
                return found
    return None


def from_dataset(dataset: FederatedDataset) -> Federation:
    """A loaded FederatedDataset: each client's train + test samples; languages from client meta."""
    clients: dict[str, list[Sample]] = {}
    languages: dict[str, Counter[str]] = {}
    for cid in dataset.client_ids:
        client = dataset[cid]
        clients[cid] = list(client.train) + list(client.test)
        found = _meta_languages(client.meta)
        if found:
            languages[cid] = found
    fed = Federation(dataset.name, clients, source=dataset.meta.get("source"), languages=languages,
                     language_source="client metadata" if languages else None)
    _check_clients(fed)
    return fed


def _lenient_read(path: Path, strict_error: DataError,
                  fixups: dict[str, Counter[str]]) -> tuple[dict[str, list[Sample]], list[str]]:
    """Parse what can be parsed of a file the strict reader refused; every skipped piece is a problem."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise strict_error from None  # the file itself is broken: nothing to report on
    if isinstance(raw, list):
        raw = {path.stem: raw}
    if not isinstance(raw, dict):
        raise strict_error
    problems = [f"the strict loader refused the file: {strict_error}"]
    clients: dict[str, list[Sample]] = {}
    for cid, records in raw.items():
        try:
            check_unicode(cid, f"{path}: client id {cid!r}", "fix the client id")
        except DataError as e:
            problems.append(f"{e} (client skipped)")
            continue
        if not isinstance(records, list):
            problems.append(f"client {cid!r}: records are a {type(records).__name__}, not a list; client skipped")
            continue
        samples: list[Sample] = []
        counts: Counter[str] = Counter()
        for i, rec in enumerate(records):
            try:
                sample = parse_record(rec, file=path, client=cid, index=i, fixups=counts)
            except DataError as e:
                problems.append(f"{e} (record skipped)")
                continue
            if samples and sample_kind(sample) != sample_kind(samples[0]):
                problems.append(f"client {cid!r}, record {i}: a {sample_kind(sample)} record among "
                                f"{sample_kind(samples[0])} records (record skipped)")
                continue
            samples.append(sample)
        clients[cid] = samples
        if counts:
            fixups[cid] = counts
    return clients, problems


def _record_languages(path: Path) -> dict[str, Counter[str]]:
    """Per-client counts of a `language` (or `lang`) field on the records themselves."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if isinstance(raw, list):
        raw = {path.stem: raw}
    out: dict[str, Counter[str]] = {}
    for cid, records in raw.items() if isinstance(raw, dict) else ():
        counts: Counter[str] = Counter()
        for rec in records if isinstance(records, list) else ():
            if isinstance(rec, dict):
                lang = rec.get("language", rec.get("lang"))
                if isinstance(lang, str) and lang.strip():
                    counts[lang.strip()] += 1
        if counts:
            out[cid] = counts
    return out


def _manifest_languages(path: Path) -> dict[str, Counter[str]]:
    """Languages from a manifest.json beside the file: {"clients": {id: {"languages": {...}} | {"language": ...}}}."""
    try:
        manifest = json.loads((path.parent / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    clients = manifest.get("clients") if isinstance(manifest, dict) else None
    out: dict[str, Counter[str]] = {}
    for cid, info in clients.items() if isinstance(clients, dict) else ():
        found = _meta_languages(info) if isinstance(info, Mapping) else None
        if found:
            out[str(cid)] = found
    return out


def from_file(path: str | os.PathLike[str], name: str | None = None) -> Federation:
    """A FedLLM-Bench file, strictly parsed if possible, else leniently with the problems listed."""
    path = Path(path)
    fixups: dict[str, Counter[str]] = {}
    try:
        clients, problems = read_fedllm_bench(path, fixups), []
    except DataError as e:
        if not path.is_file():
            raise
        fixups = {}
        clients, problems = _lenient_read(path, e, fixups)
    fed = Federation(name or path.stem, clients, source=str(path), problems=problems, fixups=fixups)
    for where, found in ((f"{MANIFEST} beside the data file", _manifest_languages(path)),
                         ("the records' `language` field", _record_languages(path))):
        found = {cid: c for cid, c in found.items() if cid in clients}
        if found:
            fed.languages, fed.language_source = found, where
            break
    _check_clients(fed)
    return fed


def load_federation(name_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Federation:
    """A registered source (built into the cache if needed) or a FedLLM-Bench file path."""
    from fedllm.data.sources import SOURCES, default_cache_dir, get_source

    if isinstance(name_or_path, str) and name_or_path.lower() in SOURCES:
        source = get_source(name_or_path)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return from_file(source.build(root, **source.default_kwargs), name=source.name)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        # load_dataset's message names the close registered names
        from fedllm.data.sources import load_dataset

        load_dataset(str(name_or_path), cache_dir=cache_dir)
    return from_file(path)


def _check_clients(fed: Federation) -> None:
    """Report empty clients and clients that mix sample kinds (they stay in the counts)."""
    if not fed.clients:
        fed.problems.append("the federation has no clients")
    for cid, samples in fed.clients.items():
        if not samples:
            fed.problems.append(f"client {cid!r} has 0 samples: counted in the quantity statistics, "
                                "left out of the per-client means of lengths and IFD")
        elif len({sample_kind(s) for s in samples}) > 1:
            fed.problems.append(f"client {cid!r} mixes instruction and preference samples")
