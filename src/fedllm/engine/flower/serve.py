"""The ServerApp's body: build the run from Flower's run config and drive it with fedllm's engine."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from rich.console import Console

from fedllm.config import ConfigError, build_config
from fedllm.engine.flower.server import FederatedEvaluator, FlowerFleet
from fedllm.engine.progress import Reporter, _Silent
from fedllm.quiet import quiet_libraries
from fedllm.runs import CHECKPOINTS, RunError


class _Lines(_Silent):
    """One line per finished round: the ServerApp's output is a log stream, not a terminal."""

    def __init__(self, console: Console, total: int, start: int) -> None:
        self.console, self.total, self.done_rounds, self.t0 = console, total, start, time.monotonic()

    def advance(self) -> None:
        self.done_rounds += 1
        self.console.print(f"round {self.done_rounds}/{self.total} done ({time.monotonic() - self.t0:.1f}s)")
        self.t0 = time.monotonic()


class LogReporter(Reporter):
    @contextmanager
    def rounds(self, total: int, start: int, title: str) -> Iterator[_Silent]:
        self.info(f"{title}: rounds {start + 1}..{total}")
        yield _Lines(self.console, total, start)


def run_server(grid: Any, run_config: dict[str, Any]) -> dict[str, Any] | None:
    """Run (or resume) the fedllm run that ``run_config`` names, with its clients on Flower nodes; the
    run's summary, or None when it stopped (the reason is the last line of the log)."""
    quiet_libraries()
    reporter = LogReporter(Console(file=sys.stdout, force_terminal=False, width=120))
    try:
        return _run(grid, run_config, reporter)
    except (RunError, ConfigError, yaml.YAMLError, KeyError) as e:
        # Return, not exit: Flower then ends the run normally and ships the whole log.
        reporter.warn(f"run stopped: {e}")
        return None
    except Exception as e:
        reporter.warn(f"run failed: {type(e).__name__}: {e}")
        raise
    finally:
        sys.stdout.flush()


def _run(grid: Any, run_config: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    from fedllm.engine.simulation import Session, Simulation

    text = str(run_config["config"])
    data = yaml.safe_load(text)
    if run_config.get("output-dir"):
        data["output_dir"] = str(run_config["output-dir"])
    cfg = build_config(data, source="the Flower run config")
    resume = str(run_config.get("resume", "auto")).lower()
    resume_flag = (cfg.run_dir / CHECKPOINTS).is_dir() if resume == "auto" else resume in ("true", "1", "yes")
    fleet = FlowerFleet(grid, cfg, {"config": text, "name": cfg.name}, reporter)
    session = Session.create(cfg)
    evaluator = FederatedEvaluator(fleet, session.slot, cfg.eval.batch_size, cfg.eval.max_samples_per_client)
    sim = Simulation(cfg, session=session, fleet=fleet, reporter=reporter, evaluator=evaluator)
    summary = sim.run(resume=resume_flag)
    final = summary.get("final_eval", {})
    reporter.info(f"done: {cfg.run_dir} (held-out loss {final.get('pooled_loss')})")
    return summary
