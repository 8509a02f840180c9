"""Evaluation units spread over worker processes, each with its share of the CPU's threads.

On a CPU, decoding a batch is not only matrix products: every step also pays per-layer bookkeeping that
a second thread barely shortens, and a judge's replies leave a core idle. Two processes with one thread
each finished two HumanEval evaluations in 0.80x the time of one two-thread process doing both, with the
same answers (benchmarks/RESULTS.md). A worker runs whole (target, metric) units in its own process, so
each answer is computed exactly as in one process with that many threads; the parent hands out units
(those of a metric not yet timed first, then the longest by the time that metric took, so no worker is
left with a long unit at the end), shows the workers' progress bars, and re-raises a worker's error.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import queue
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape

from fedllm.eval.context import EvalError
from fedllm.progress import bar_display

Unit = Hashable
#: a model smaller than this evaluates faster than two processes start (tens of seconds at most)
MIN_WEIGHTS_BYTES = 64 * 2**20
#: a worker's peak memory in multiples of the model's weight bytes: fp32 weights, their bf16 copy for inference,
#: activations, logits over the vocabulary and KV caches (6.5x measured for the embedded model at --batch-size 32)
MEMORY_PER_WEIGHT_BYTE = 7
#: the share of the available memory two workers may take (the rest: the judge, the system)
MEMORY_SHARE = 0.75


@dataclass(frozen=True)
class Plan:
    workers: int
    threads: int  # torch threads per worker
    why: str



def plan(requested: str | int, units: int, threads: int, cuda: bool, weights_bytes: int | None,
         available_bytes: int | None) -> Plan:
    """How many workers for ``units`` units, and threads each: ``requested`` when a number (at most one per
    unit and per thread); ``auto``: two on a CPU of 2+ threads for a model of 64 MiB or more whose two
    workers fit in three quarters of the available memory, else one. ``threads`` is the process's torch thread
    budget, split evenly."""
    if requested != "auto":
        n = max(1, min(int(requested), units, threads))
        return Plan(n, max(1, threads // n), f"--workers {requested}")
    if cuda:
        return Plan(1, threads, "auto: one process on a GPU")
    if units < 2 or threads < 2:
        return Plan(1, threads, f"auto: {'one unit' if units < 2 else 'one CPU thread'}")
    if weights_bytes is None or available_bytes is None:
        return Plan(1, threads, "auto: the model's size is not known before loading it")
    if weights_bytes < MIN_WEIGHTS_BYTES:
        return Plan(1, threads, "auto: a model this small evaluates faster than two processes start")
    if 2 * MEMORY_PER_WEIGHT_BYTE * weights_bytes > MEMORY_SHARE * available_bytes:
        return Plan(1, threads, f"auto: two workers would not fit in {available_bytes / 2**30:.1f} GiB of free memory")
    return Plan(2, threads // 2, f"auto: a CPU with {threads} threads")


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable), None where unknown."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def next_unit(pending: list[Unit], kind: Callable[[Unit], str], seconds: dict[str, list[float]]) -> Unit:
    """Remove and return the unit to start next: the first whose kind has not been timed yet (in the
    given order), else the one whose kind took longest on average."""
    for i, u in enumerate(pending):
        if kind(u) not in seconds:
            return pending.pop(i)
    i = max(range(len(pending)), key=lambda j: sum(seconds[kind(pending[j])]) / len(seconds[kind(pending[j])]))
    return pending.pop(i)


class WorkerError(EvalError):
    """A worker process stopped without reporting its unit."""


def run_in_workers(units: Sequence[Unit], make_runner: Callable[..., Callable[[Unit], Any]], *, workers: int,
                   threads: int, kind: Callable[[Unit], str], describe: Callable[[Unit], str],
                   on_done: Callable[[Unit, Any], None], console: Console | None) -> None:
    """Run every unit through ``make_runner(bars)(unit)`` in ``workers`` spawned processes of ``threads``
    torch threads; ``on_done(unit, result)`` in this process as each finishes. ``make_runner`` must be
    picklable (a module-level callable or a partial of one); the first error stops all workers and is
    raised here."""
    spawn = mp.get_context("spawn")  # no fork of a process whose thread pools are running
    events = spawn.Queue()
    tasks = [spawn.Queue() for _ in range(workers)]
    procs = [spawn.Process(target=_work, args=(make_runner, threads, tasks[w], events, w), name=f"fedllm-eval-{w}")
             for w in range(workers)]
    pending = list(units)
    seconds: dict[str, list[float]] = {}
    busy: dict[int, tuple[Unit, float]] = {}
    display = bar_display(console) if console is not None else None
    bars: dict[tuple[int, int], Any] = {}

    def hand_out(w: int) -> None:
        if pending:
            unit = next_unit(pending, kind, seconds)
            busy[w] = (unit, time.perf_counter())
            tasks[w].put(unit)
            if console is not None:
                console.print(f"[bold]{escape(describe(unit))}[/] [dim](worker {w + 1})[/]", highlight=False)

    try:
        for p in procs:
            p.start()
        with display if display is not None else contextlib.nullcontext():
            for w in range(workers):
                hand_out(w)
            while busy:
                try:
                    event = events.get(timeout=1.0)
                except queue.Empty:
                    for w, (unit, _) in busy.items():
                        if not procs[w].is_alive():
                            raise WorkerError(f"evaluation worker {w + 1} stopped (exit code {procs[w].exitcode}) "
                                              f"while evaluating {describe(unit)}; finished items are cached, "
                                              f"so running the command again resumes (--workers 1: one process)")
                    continue
                what, w = event[0], event[1]
                if what == "done":
                    unit, t0 = busy.pop(w)
                    seconds.setdefault(kind(unit), []).append(time.perf_counter() - t0)
                    on_done(unit, event[2])
                    hand_out(w)
                elif what == "error":
                    raise event[2]
                elif display is not None and what == "bar":
                    bars[(w, event[2])] = display.add_task(event[3], total=event[4])
                elif display is not None and what == "advance":
                    display.advance(bars[(w, event[2])], event[3])
    finally:
        for t in tasks:
            t.put(None)
        deadline = time.monotonic() + 10
        for p in procs:
            if p.pid is not None:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    p.terminate()
                    p.join(5)


def _work(make_runner: Callable[..., Callable[[Unit], Any]], threads: int, tasks: Any, events: Any, w: int) -> None:
    """A worker: its thread budget, one runner, then units until told to stop (None)."""
    import torch

    from fedllm.children import die_with_parent
    from fedllm.quiet import quiet_libraries

    die_with_parent()  # a parent killed outright takes its workers with it
    quiet_libraries()  # as the parent's console: fedllm's own lines only
    torch.set_num_threads(threads)
    try:
        run = make_runner(bars=_forwarded_bars(events, w))
        while (unit := tasks.get()) is not None:
            events.put(("done", w, run(unit)))
    except KeyboardInterrupt:
        return
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, which raises it
        events.put(("error", w, _picklable(e)))


def _picklable(e: BaseException) -> BaseException:
    """The exception itself, with the worker's traceback as a note, when it crosses processes intact; else a
    RuntimeError with its text."""
    import pickle

    e.add_note("in the evaluation worker:\n" + "".join(traceback.format_exception(e)))
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


def _forwarded_bars(events: Any, w: int) -> Callable[[str, int], Any]:
    """Progress bars whose updates go to the parent's display."""
    count = itertools.count()

    @contextlib.contextmanager
    def bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
        if total <= 0:
            yield lambda n=1: None
            return
        i = next(count)
        events.put(("bar", w, i, description, total))
        yield lambda n=1: events.put(("advance", w, i, n))

    return bar


__all__ = ["Plan", "WorkerError", "available_memory", "next_unit", "plan", "run_in_workers"]
