"""Terminal progress: rich bars for rounds and client steps, silent when quiet (tests, benchmarks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Silent:
    def client(self, cid: str, steps: int) -> Any:
        return None

    def step(self, task: Any, loss: float) -> None:
        pass

    def done(self, task: Any) -> None:
        pass

    def advance(self) -> None:
        pass


class _Bars(_Silent):
    def __init__(self, progress: Progress, round_task: Any) -> None:
        self.p = progress
        self.round_task = round_task

    def client(self, cid: str, steps: int) -> Any:
        return self.p.add_task(f"  client {cid}", total=steps, loss="")

    def step(self, task: Any, loss: float) -> None:
        self.p.update(task, advance=1, loss=f"loss {loss:.4f}")

    def done(self, task: Any) -> None:
        self.p.remove_task(task)

    def advance(self) -> None:
        self.p.advance(self.round_task)


class Reporter:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        """Warnings show even when quiet: they say something is not as the user asked."""
        self.console.print(f"[yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)

    def eval(self, round_done: int, row: dict[str, Any]) -> None:
        """One line per evaluation: the held-out losses if the evaluator gave them, else every number."""
        if "pooled_loss" in row:
            text = f"held-out loss {row['pooled_loss']:.4f} (pooled), {row.get('mean_client_loss', float('nan')):.4f} (client mean)"
            if "reward_accuracy" in row:
                text += f", reward accuracy {row['reward_accuracy']:.3f}, margin {row['margin']:.4f}"
        else:
            text = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "seconds")
        self.info(f"  [cyan]eval[/] after round {round_done}: {text}")

    @contextlib.contextmanager
    def rounds(self, total: int, start: int, title: str) -> Iterator[_Silent]:
        if self.quiet:
            yield _Silent()
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                   TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.console, transient=False) as p:
            task = p.add_task(f"{title} rounds", total=total, completed=start, loss="")
            yield _Bars(p, task)
