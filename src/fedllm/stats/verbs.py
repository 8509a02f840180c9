"""Top root verbs of each client's instructions (FedLLM-Bench Fig. 4), with spaCy when it and its
English model are installed. spaCy is optional: without it the analysis is skipped with a message.

A parser is any callable texts -> root-verb lemma per text (None where the root is not a verb), so a
test or another NLP library can stand in for spaCy. The parsed text is the instruction's first
non-empty line, at most 300 characters (for code-heavy instructions the rest is not prose).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from rich.console import Console

from fedllm.progress import progress_bar
from fedllm.stats.corpus import Federation, instruction_text
from fedllm.stats.sampling import seeded_order

VerbParser = Callable[[list[str]], list["str | None"]]
SPACY_MODEL = "en_core_web_sm"
SKIP_MESSAGE = (
    "root-verb analysis skipped: spaCy English model not found; install with "
    "`pip install spacy && python -m spacy download en_core_web_sm`"
)
MAX_CHARS = 300


def spacy_parser(model: str = SPACY_MODEL) -> VerbParser | None:
    """A parser backed by spaCy's `model`, or None when spaCy or the model cannot be loaded."""
    try:
        import spacy

        nlp = spacy.load(model, disable=["ner"])
    except Exception:  # ImportError, OSError (model missing) and spaCy's own load errors alike
        return None

    def parse(texts: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for doc in nlp.pipe(texts, batch_size=64):
            root = next((t for t in doc if t.dep_ == "ROOT"), None)
            out.append(root.lemma_.lower() if root is not None and root.pos_ == "VERB" else None)
        return out

    return parse


def first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:MAX_CHARS]


def root_verbs(fed: Federation, parser: VerbParser, *, per_client: int = 200, seed: int = 0,
               console: Console | None = None) -> dict[str, Counter[str]]:
    """client id -> counts of root verbs over up to `per_client` seeded instructions."""
    out: dict[str, Counter[str]] = {}
    with progress_bar(console, "root verbs", len(fed.clients)) as advance:
        for cid, samples in fed.clients.items():
            picked = sorted(seeded_order(len(samples), seed, cid)[:per_client])
            verbs = parser([first_line(instruction_text(samples[i])) for i in picked]) if picked else []
            out[cid] = Counter(v for v in verbs if v)
            advance(1)
    return out
