"""Server optimizers: how the aggregated Δ moves the global adapter. One module each; importing registers."""

from fedllm.fl.optimizers import sgd as sgd  # noqa: F401
from fedllm.fl.optimizers import momentum as momentum  # noqa: F401
from fedllm.fl.optimizers import adagrad as adagrad  # noqa: F401
from fedllm.fl.optimizers import adam as adam  # noqa: F401
from fedllm.fl.optimizers import yogi as yogi  # noqa: F401
