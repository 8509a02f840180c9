"""Registry of evaluation metrics: one module per metric, imported at the bottom of this file.

A metric is a class with ``name``, ``columns`` (its result-table columns), ``needs_judge``,
``description`` and ``run(ctx: EvalContext) -> MetricResult`` (see ``fedllm.eval.context``),
registered with ``@register_metric``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from fedllm.eval.context import EvalError, Metric

_METRICS: dict[str, type] = {}
METRICS: Mapping[str, type] = MappingProxyType(_METRICS)
M = TypeVar("M", bound=type)


def register_metric(cls: M) -> M:
    if cls.name in _METRICS:
        raise ValueError(f"metric {cls.name!r} registered twice")
    _METRICS[cls.name] = cls
    return cls


def get_metric(name: str) -> Metric:
    if name not in _METRICS:
        close = difflib.get_close_matches(name, list(_METRICS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EvalError(f"unknown metric {name!r}{hint} (known: {', '.join(sorted(_METRICS))})")
    return _METRICS[name]()


# One import per metric: importing a module registers it.
from fedllm.eval.metrics import heldout  # noqa: E402,F401
from fedllm.eval.metrics import mmlu  # noqa: E402,F401
from fedllm.eval.metrics import gsm8k  # noqa: E402,F401
from fedllm.eval.metrics import humaneval  # noqa: E402,F401
from fedllm.eval.metrics import advbench  # noqa: E402,F401
from fedllm.eval.metrics import mt_bench  # noqa: E402,F401
from fedllm.eval.metrics import vicuna  # noqa: E402,F401
from fedllm.eval.metrics import ref_judge  # noqa: E402,F401
from fedllm.eval.metrics import embed_sim  # noqa: E402,F401
