"""Registry of evaluation metrics: one module per metric, imported at the bottom of this file.

A metric is a class with ``name``, ``columns`` (its result-table columns), ``needs_judge``,
``description`` and ``run(ctx: EvalContext) -> MetricResult`` (see ``fedllm.eval.context``),
registered with ``@register_metric``.
"""

from __future__ import annotations

from typing import TypeVar

from fedllm.eval.context import EvalError, Metric
from fedllm.registry import Registry

METRICS: Registry[type] = Registry("metric", error=EvalError)
"""Metric name -> class (filled by @register_metric at import time)."""
M = TypeVar("M", bound=type)


def register_metric(cls: M) -> M:
    """Class decorator registering a metric under its ``name`` (unique, lower-case)."""
    return METRICS.register(cls.name)(cls)


def get_metric(name: str) -> Metric:
    """An instance of the metric registered as `name`; EvalError lists the known metrics."""
    return METRICS.lookup(name)()


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
