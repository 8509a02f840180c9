"""A run's task: how samples become features (objective, template, tokenizer, length limit).

Training, evaluation and the client rounds encode through one ``Task``, so a sample is dropped for
the same reason everywhere: a sample whose loss units (assistant tokens for SFT) were all cut by
truncation teaches nothing, yet would count as trained and, for a client left with only such
samples, report a loss of 0 with full aggregation weight.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedllm.data import formatting, schema
from fedllm.data.formatting import Template, get_template
from fedllm.data.schema import Sample
from fedllm.hashing import stable_hash
from fedllm.train import objective
from fedllm.train.objectives import Objective, get_objective, objective_for


class WrongKind(ValueError):
    """The data holds samples of a kind the objective does not train on; the message names the one that does."""


@dataclass
class Encoded:
    """Features of the samples that can train, and how many were dropped for which reason."""

    features: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # why samples were dropped -> how many

    @property
    def dropped(self) -> int:
        return sum(self.reasons.values())

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class Task:
    objective: Objective
    template: Template
    tokenizer: Any
    max_length: int

    @classmethod
    def create(cls, objective: str, template: str, tokenizer: Any, max_length: int, **options: Any) -> Task:
        return cls(get_objective(objective, **options), get_template(template, tokenizer), tokenizer, max_length)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @functools.cached_property
    def _fingerprint(self) -> str:
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        definition = backend.to_str() if backend is not None else sorted(tok.get_vocab().items())
        modules = (formatting, schema, objective, sys.modules[type(self.objective).__module__])  # the API and the objective
        code = [Path(m.__file__).read_text(encoding="utf-8") for m in modules]
        return stable_hash(self.objective.name, self.template.name, getattr(tok, "chat_template", None), definition,
                           tok.bos_token, tok.eos_token, tok.pad_token, self.max_length, code)

    def fingerprint(self) -> str:
        """Everything that decides the features: the objective, the template (with the tokenizer's chat
        template), the tokenizer's whole definition, the length limit and the encoding code itself."""
        return self._fingerprint

    def encode(self, samples: Sequence[Sample]) -> Encoded:
        """Encode every sample; keep those the objective can train on (a loss unit left after
        truncation, nothing that makes them unusable), counting the others by reason."""
        out = Encoded()
        obj = self.objective
        for s in samples:
            if not isinstance(s, obj.sample_type):
                fits = objective_for(s)
                raise WrongKind(f"train.objective={obj.name} trains on {obj.sample_type.__name__}s, but the data holds "
                                f"{type(s).__name__}s" + (f": use train.objective={fits}" if fits else ""))
            reason = obj.unusable(s)
            if reason is None:
                f = obj.encode(s, self.template, self.tokenizer, self.max_length)
                if obj.units(f) > 0:
                    out.features.append(f)
                    continue
                reason = obj.truncated
            out.reasons[reason] = out.reasons.get(reason, 0) + 1
        return out
