"""One renderer for the tables the bench commands write: Markdown, LaTeX (booktabs), CSV or an HTML
table, from cells the caller has already formatted (CSV callers pass raw numbers as text)."""

from __future__ import annotations

import csv
import html
import io


def render(head: list[str], rows: list[list[str]], fmt: str, left: int = 1) -> str:
    """``rows`` under ``head`` as ``fmt`` ("markdown", "latex", "csv" or "html"); the first ``left`` columns
    are left-aligned, the rest right-aligned."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "html":
        def cells(row: list[str], tag: str) -> str:
            return "".join(f'<{tag} class="{"l" if i < left else "r"}">{html.escape(c)}</{tag}>' for i, c in enumerate(row))

        body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
        return f"<table><thead><tr>{cells(head, 'th')}</tr></thead><tbody>{body}</tbody></table>\n"
    if fmt == "latex":
        esc = lambda t: t.replace("%", "\\%").replace("_", "\\_")  # noqa: E731
        lines = ["\\begin{tabular}{" + "l" * left + "r" * (len(head) - left) + "}", "\\toprule",
                 " & ".join(map(esc, head)) + " \\\\", "\\midrule"]
        lines += [" & ".join(map(esc, row)) + " \\\\" for row in rows]
        return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"
    rule = "|" + "---|" * left + "---:|" * (len(head) - left)
    return "\n".join(["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"
