"""Training objectives by name: SFT and every registered objective (importing a module registers it);
the trainer and evaluation call only the ``Objective`` API of ``fedllm.train.objective``."""

from __future__ import annotations

from typing import Any

from fedllm.data.schema import Sample
from fedllm.train import dpo as dpo  # noqa: F401  (registers "dpo")
from fedllm.train.objective import (OBJECTIVES, SFT, Objective, labelled_token_losses, register_objective,
                                    to_device, token_loss_sum)

__all__ = ["OBJECTIVES", "SFT", "Objective", "get_objective", "labelled_token_losses", "objective_for",
           "register_objective", "to_device", "token_loss_sum"]


def get_objective(name: str, **options: Any) -> Objective:
    """An instance of the objective registered as `name` (with its options, e.g. DPO's beta);
    ValueError lists the known objectives."""
    return OBJECTIVES.lookup(name)(**options)


def objective_for(sample: Sample) -> str | None:
    """The registered objective that trains on samples of this kind (for error messages)."""
    return next((name for name, cls in OBJECTIVES.items() if isinstance(sample, cls.sample_type)), None)
