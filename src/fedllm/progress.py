"""Progress bars for long loops (dataset statistics, evaluation): silent when there is no console."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def bar_display(console: Console) -> Progress:
    """The display progress bars share: description, bar, done/total, elapsed and remaining time."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    return Progress(*columns, console=console, transient=False)


@contextlib.contextmanager
def progress_bar(console: Console | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields advance(n); a rich bar on `console`, nothing when console is None or total is 0."""
    if console is None or total <= 0:
        yield lambda n=1: None
        return
    with bar_display(console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


__all__ = ["bar_display", "progress_bar"]
