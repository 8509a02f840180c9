"""Fenced code blocks in a model's answer: which one holds the answer, and when that is settled.

HumanEval reads the first Python (or untagged) block that defines the entry point. Once such a block
is closed, text generated after it cannot change which block is read or what it holds, so decoding
may end there (``closed_block_defines``) with the score unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
PYTHON_TAGS = frozenset({"python", "python3", "py", "py3"})


def entry_def(name: str) -> re.Pattern[str]:
    """``def name(`` at the start of a line (any indentation, captured)."""
    return re.compile(rf"^([ \t]*)def[ \t]+{re.escape(name)}[ \t]*\(", re.MULTILINE)


def blocks(text: str) -> Iterator[tuple[str, str, bool]]:
    """Each fenced block in order: (language tag in lower case, body, whether its closing fence is there)."""
    for m in FENCE.finditer(text):
        yield m.group(1).lower(), m.group(2), m.group(0).endswith("```")


def defines(tag: str, body: str, pattern: re.Pattern[str]) -> bool:
    """Whether a block is Python (or untagged) and defines the function ``pattern`` looks for."""
    return (tag in PYTHON_TAGS or not tag) and pattern.search(body) is not None


def closed_block_defines(text: str, name: str) -> bool:
    """Whether a closed Python (or untagged) block of ``text`` defines ``name``. Blocks before a closed
    one are closed too, and appending text cannot change a closed block, so the block ``pick`` prefers
    is then fixed."""
    pattern = entry_def(name)
    return any(closed and defines(tag, body, pattern) for tag, body, closed in blocks(text))


def pick(text: str, name: str) -> str | None:
    """The block holding the answer: the first Python (or untagged) block defining ``name``, else the
    first Python block, else the first untagged one, else the first of any language; None without one."""
    found = [(tag, body) for tag, body, _ in blocks(text)]
    if not found:
        return None
    pattern = entry_def(name)
    for tag, body in found:
        if defines(tag, body, pattern):
            return body
    for wanted in (lambda t: t in PYTHON_TAGS, lambda t: not t, lambda t: True):
        for tag, body in found:
            if wanted(tag):
                return body
    return None
