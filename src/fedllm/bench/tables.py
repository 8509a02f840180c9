"""One renderer for the tables the bench commands write: Markdown, LaTeX (booktabs) or CSV, from cells
the caller has already formatted (CSV callers pass raw numbers as text)."""

from __future__ import annotations

import csv
import io


def render(head: list[str], rows: list[list[str]], fmt: str, left: int = 1) -> str:
    """``rows`` under ``head`` as ``fmt`` ("markdown", "latex" or "csv"); the first ``left`` columns are
    left-aligned, the rest right-aligned."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "latex":
        esc = lambda t: t.replace("%", "\\%").replace("_", "\\_")  # noqa: E731
        lines = ["\\begin{tabular}{" + "l" * left + "r" * (len(head) - left) + "}", "\\toprule",
                 " & ".join(map(esc, head)) + " \\\\", "\\midrule"]
        lines += [" & ".join(map(esc, row)) + " \\\\" for row in rows]
        return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"
    rule = "|" + "---|" * left + "---:|" * (len(head) - left)
    return "\n".join(["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"
