"""IA³ (Liu et al. 2022): learned vectors that rescale the keys, values and feed-forward activations."""

from __future__ import annotations

import re
from typing import Any

from fedllm.models.peft_methods.base import PeftMethod, missing_modules, register_peft_method


@register_peft_method("ia3")
class IA3(PeftMethod):
    """One vector per target module, starting at ones (the base model exactly); ``peft.ia3_target_modules``
    (``peft.ia3_feedforward_modules`` scale their inputs, the others their outputs)."""

    def peft_config(self, model: Any, layers: list[int] | None = None) -> Any:
        from peft import IA3Config

        p = self.cfg.peft
        targets, ff = list(p.ia3_target_modules), list(p.ia3_feedforward_modules)
        if layers is None:
            return IA3Config(target_modules=targets, feedforward_modules=ff, task_type="CAUSAL_LM")
        return IA3Config(target_modules=_in_layers(targets, layers), feedforward_modules=_in_layers(ff, layers),
                         task_type="CAUSAL_LM")

    def problem(self, model: Any, layers: list[int] | None = None) -> str | None:
        return missing_modules(model, self.cfg.peft.ia3_target_modules, "peft.ia3_target_modules")


def _in_layers(names: list[str], layers: list[int]) -> str:
    """A peft module regex: these module names inside these decoder layers only (IA³ has no layers_to_transform)."""
    return rf".*\.layers\.({'|'.join(map(str, layers))})\.(.*\.)?({'|'.join(map(re.escape, names))})"
