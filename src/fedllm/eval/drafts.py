"""Draft tokens for speculative decoding by prompt lookup: what followed the latest earlier occurrence of
the answer's last few tokens, in the prompt or the answer so far.

Answers copy their prompts (HumanEval restates the signature, GSM8K the question's numbers) and repeat
themselves; the decoding loop checks a draft of k tokens in one forward of k + 1 positions per row and
keeps the longest prefix greedy decoding would have produced anyway, so the answers do not change while
a step yields ~2 tokens (measured in benchmarks/RESULTS.md). No second model is needed.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NGRAM = 3  # longest tail looked up; shorter tails are tried when it has not occurred before


class PromptLookup:
    """The tokens of one row (prompt, then answer) with, per n-gram length, where each n-gram's latest
    occurrence was followed: updated as tokens arrive, so a draft costs a few dictionary lookups."""

    def __init__(self, tokens: Iterable[int] = (), max_ngram: int = MAX_NGRAM) -> None:
        self.tokens: list[int] = []
        self._after: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram)]
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append tokens; each n-gram that now has a successor is indexed at it (later ones win)."""
        seq = self.tokens
        for t in tokens:
            end = len(seq)
            for n, index in enumerate(self._after, start=1):
                if end >= n:
                    index[tuple(seq[end - n:end])] = end
            seq.append(int(t))

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest tail (of at most ``max_ngram`` tokens) seen before."""
        seq = self.tokens
        for n in range(len(self._after), 0, -1):
            if len(seq) >= n and (at := self._after[n - 1].get(tuple(seq[-n:]))) is not None:
                return seq[at:at + k]
        return []
