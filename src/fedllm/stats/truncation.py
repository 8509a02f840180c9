"""Samples that truncation leaves with nothing to learn: encoded as training encodes them (the run's
template, cut on the right at the run's ``data.max_length``), a sample whose assistant tokens all lie
past the cut keeps no trained token, and training drops it.

Instruction data: ``encode_sft`` gives ``num_trainable == 0``. Preference data: a pair counts when
either reply keeps no trained label after ``encode_preference`` (which cuts the prompt first).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from fedllm.data.formatting import IGNORE_INDEX, Template, encode_preference, encode_sft
from fedllm.data.schema import PreferenceSample, Sample
from fedllm.progress import progress_bar
from fedllm.stats.corpus import Federation


def keeps_nothing(sample: Sample, template: Template, tokenizer: Any, max_length: int) -> bool:
    """Whether `sample`, encoded at `max_length`, keeps no trained token (for a pair: on either side)."""
    if isinstance(sample, PreferenceSample):
        enc = encode_preference(sample, template, tokenizer, max_length)
        return any(all(label == IGNORE_INDEX for label in enc[f"{side}_labels"]) for side in ("chosen", "rejected"))
    return encode_sft(sample, template, tokenizer, max_length)["num_trainable"] == 0


def truncated_to_nothing(fed: Federation, template: Template, tokenizer: Any, max_length: int,
                         console: Console | None = None) -> dict[str, int]:
    """client id -> how many of its samples keep no trained token at `max_length` (every client)."""
    out: dict[str, int] = {}
    with progress_bar(console, f"truncation at max_length {max_length}", sum(map(len, fed.clients.values()))) as advance:
        for cid, samples in fed.clients.items():
            out[cid] = sum(keeps_nothing(s, template, tokenizer, max_length) for s in samples)
            advance(len(samples))
    return out


def summary(per_client: dict[str, int], total_samples: int, max_length: int, template: str) -> dict[str, Any]:
    """The stats.json entry: total, share of all samples, and the clients that lose any (count > 0)."""
    total = sum(per_client.values())
    return {
        "max_length": max_length,
        "template": template,
        "total": total,
        "share": total / total_samples if total_samples else 0.0,
        "per_client": {cid: n for cid, n in per_client.items() if n},
    }
