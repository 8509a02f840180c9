"""Federated algorithms as pure tensor math on adapter states (no I/O, no model).

Parts (one module each, registered on import): ``aggregators/``, ``optimizers/`` (server
optimizers), ``methods/`` (client methods with their server halves), ``transforms/`` (update
transforms); ``presets`` names the eight FedLLM-Bench methods; ``server.Algorithm`` composes them.
"""

from fedllm.fl import aggregators as aggregators  # noqa: F401  (registers)
from fedllm.fl import methods as methods  # noqa: F401
from fedllm.fl import optimizers as optimizers  # noqa: F401
from fedllm.fl import presets as presets  # noqa: F401
from fedllm.fl import transforms as transforms  # noqa: F401
from fedllm.fl.base import ClientContext, ClientHooks, ClientUpdate, Federation, Rejected
from fedllm.fl.registries import AGGREGATORS, ALGORITHMS, CLIENT_METHODS, SERVER_OPTIMIZERS, TRANSFORMS, register_algorithm
from fedllm.fl.params import DPConfig, FLParams
from fedllm.fl.server import Algorithm, RoundOutcome, build_algorithm, build_client_hooks, ignored_params
from fedllm.fl.state import State

__all__ = [
    "AGGREGATORS",
    "ALGORITHMS",
    "CLIENT_METHODS",
    "SERVER_OPTIMIZERS",
    "TRANSFORMS",
    "Algorithm",
    "ClientContext",
    "ClientHooks",
    "ClientUpdate",
    "DPConfig",
    "FLParams",
    "Federation",
    "Rejected",
    "RoundOutcome",
    "State",
    "build_algorithm",
    "build_client_hooks",
    "ignored_params",
    "register_algorithm",
]
