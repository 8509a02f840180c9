"""Fed-Aya (FedLLM-Bench): the human-written Aya dataset, one client per annotator.

FedLLM-Bench keeps eight languages of CohereForAI/aya_dataset (English, Spanish, French, Russian,
Portuguese, Simplified Chinese, Standard Arabic, Telugu), makes each annotator (``user_id``) a
client and keeps annotators with at least 100 samples: 38 clients, 25,513 samples in the paper.
A sample is ``inputs`` -> ``targets``. An annotator who wrote in several of the kept languages is
one client; the manifest lists each client's languages (``clients.<id>.languages``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from fedllm.data.groups import majority
from fedllm.data.schema import DataError, InstructionSample
from fedllm.data.sources import register_source
from fedllm.data.sources.hub import INPUT_KWARGS, Built, Drops, PublicSource, Row, select_clients, text_field

AYA_LANGUAGES: tuple[str, ...] = (
    "English",
    "Spanish",
    "French",
    "Russian",
    "Portuguese",
    "Simplified Chinese",
    "Standard Arabic",
    "Telugu",
)


@register_source("fed-aya")
class FedAya(PublicSource):
    """Fed-Aya: multilingual instructions written by Aya annotators, one client per annotator."""

    description = (
        "FedLLM-Bench Fed-Aya: CohereForAI/aya_dataset, 8 languages, one client per annotator with >= 100 "
        "samples (paper: 38 clients, 25,513 samples); language and quality skew."
    )
    hub_id = "CohereForAI/aya_dataset"
    required_fields = ("inputs", "targets", "language", "user_id")
    optional_fields = ("language_code", "annotation_type")
    construction = (
        "rows whose `language` is one of `languages`; sample = inputs -> targets; one client per `user_id`; "
        "clients with >= min_samples samples, the max_clients largest if set; clients ordered by size."
    )
    default_kwargs = MappingProxyType(
        {**INPUT_KWARGS, "hub_id": hub_id, "languages": AYA_LANGUAGES, "min_samples": 100, "max_clients": None}
    )

    def construct(self, rows: Iterable[Row], params: Mapping[str, Any], drops: Drops) -> Built:
        languages = set(params["languages"])
        groups: dict[str, list[InstructionSample]] = defaultdict(list)
        langs: dict[str, Counter[str]] = defaultdict(Counter)
        seen: Counter[str | None] = Counter()
        for row in rows:
            language = text_field(row, "language", self.name)
            seen[language] += 1
            if language not in languages:
                drops.row("language_not_selected")
                continue
            user = text_field(row, "user_id", self.name)
            if user is None:
                drops.row("no_user_id")
                continue
            inputs, targets = text_field(row, "inputs", self.name), text_field(row, "targets", self.name)
            if inputs is None or targets is None:
                drops.row("empty_text")
                continue
            groups[user].append(InstructionSample.single_turn(inputs, targets))
            langs[user][language] += 1
        absent = sorted(languages - set(seen))
        if absent:  # a misspelt language would otherwise silently shrink the federation
            present = ", ".join(sorted(str(k) for k in seen if k))
            msg = f"{self.name}: requested languages {absent} do not occur in the input (its languages: {present})"
            if len(absent) == len(languages):
                raise DataError(msg)
            print(f"warning: {msg}")
        kept = select_clients(groups, drops, min_samples=params["min_samples"], max_clients=params["max_clients"])
        meta = {cid: {"languages": dict(sorted(langs[cid].items()))} for cid in kept}
        return Built(kept, meta)

    def client_attributes(self, manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``language``: the language a client wrote most in (ties: the first by name); an annotator
        who wrote in several keeps their other samples in the same group."""
        out = {}
        for cid, info in manifest["clients"].items():
            langs = info.get("languages") or {}
            out[cid] = {"language": majority(langs)} if langs else {}
        return out
