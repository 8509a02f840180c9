"""Token lengths of instructions and responses per client, and the length preference of preference data.

Lengths are counted with the configured model's tokenizer on the raw text (add_special_tokens=False,
no template): the instruction is the first user message (for preference data the last user message of
the prompt), the response the first assistant message (for preference data the chosen reply; the
rejected reply is counted separately).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from fedllm.data.schema import PreferenceSample
from fedllm.progress import progress_bar
from fedllm.stats.corpus import Federation, instruction_text, response_text


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens per text with the tokenizer alone (no special tokens, no template)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def token_lengths(fed: Federation, tokenizer: Any, console: Console | None = None) -> dict[str, dict[str, list[int]]]:
    """client id -> {"instruction": [...], "response": [...]} (+ "rejected" for preference clients)."""
    out: dict[str, dict[str, list[int]]] = {}
    with progress_bar(console, "token lengths", len(fed.clients)) as advance:
        for cid, samples in fed.clients.items():
            entry = {
                "instruction": count_tokens(tokenizer, [instruction_text(s) for s in samples]),
                "response": count_tokens(tokenizer, [response_text(s) for s in samples]),
            }
            pref = [s for s in samples if isinstance(s, PreferenceSample)]
            if pref:
                entry["rejected"] = count_tokens(tokenizer, [s.rejected for s in pref])
            out[cid] = entry
            advance(1)
    return out


def length_preference(chosen: list[int], rejected: list[int]) -> float:
    """Share of pairs whose chosen reply has more tokens than the rejected one (ties count as not longer)."""
    pairs = list(zip(chosen, rejected, strict=True))
    return sum(c > r for c, r in pairs) / len(pairs) if pairs else float("nan")
