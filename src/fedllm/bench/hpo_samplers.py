"""The samplers of `fedllm hpo` (Optuna's grid, random and TPE, seeded) and its pruners (none, or
successive halving on each round's validation loss): one registry line each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedllm.bench.hpo_space import SearchSpace
from fedllm.config import ConfigError
from fedllm.registry import Registry
from fedllm.seeding import derive_seed

SAMPLERS: Registry[Callable[..., Any]] = Registry("hpo sampler", error=ConfigError)


@SAMPLERS.register("grid")
def _grid(space: SearchSpace, seed: int, number: int) -> Any:
    """Every point of the grid once: trial k is point k of the grid shuffled by the seed."""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            """Optuna's would stop study.optimize at the grid's end; the study's loop stops there by itself."""

    return Grid(space.grid(), seed=seed % 2**32)


@SAMPLERS.register("random")
def _random(space: SearchSpace, seed: int, number: int) -> Any:
    """Uniform draws, seeded per trial from (seed, trial number)."""
    import optuna

    return optuna.samplers.RandomSampler(seed=_trial_seed(seed, number))


@SAMPLERS.register("tpe")
def _tpe(space: SearchSpace, seed: int, number: int) -> Any:
    """Optuna's TPE, seeded per trial (its first 10 trials are drawn at random, its n_startup_trials)."""
    import optuna

    return optuna.samplers.TPESampler(seed=_trial_seed(seed, number))


def _trial_seed(seed: int, number: int) -> int:
    """A sampler seed per trial, so a study resumed after a kill draws what an uninterrupted one would."""
    return derive_seed(seed, "hpo-sampler", number) % 2**32


PRUNERS = ("none", "halving")


PRUNERS: Registry[Callable[..., Any]] = Registry("hpo pruner", error=ConfigError)


@PRUNERS.register("none")
def _no_pruning(eta: int) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


@PRUNERS.register("halving")
def _halving(eta: int) -> Any:
    """Asynchronous successive halving: rungs after 1, η, η², … rounds; a trial goes on past a rung
    only if its validation loss there is in the best 1/η of the trials that reached it."""
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta)
