"""Aggregators: how the round's surviving client deltas combine into one Δ. One module each;
importing registers."""

from fedllm.fl.aggregators import mean as mean  # noqa: F401
from fedllm.fl.aggregators import single as single  # noqa: F401
from fedllm.fl.aggregators import median as median  # noqa: F401
from fedllm.fl.aggregators import trimmed_mean as trimmed_mean  # noqa: F401
from fedllm.fl.aggregators import krum as krum  # noqa: F401
from fedllm.fl.aggregators import norm_bounded as norm_bounded  # noqa: F401
