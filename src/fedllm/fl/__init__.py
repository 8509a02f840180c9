"""Federated algorithms as pure tensor math on adapter states (no I/O, no model)."""

from fedllm.fl.base import (
    ALGORITHMS,
    Algorithm,
    ClientHooks,
    ClientUpdate,
    FLParams,
    build_algorithm,
    register_algorithm,
)
from fedllm.fl.state import State

# One import per algorithm: importing a module registers it.
from fedllm.fl.local import Local
from fedllm.fl.fedavg import FedAvg
from fedllm.fl.fedprox import FedProx
from fedllm.fl.scaffold import Scaffold
from fedllm.fl.fedavgm import FedAvgM
from fedllm.fl.fedadagrad import FedAdagrad
from fedllm.fl.fedyogi import FedYogi
from fedllm.fl.fedadam import FedAdam

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "ClientHooks",
    "ClientUpdate",
    "FLParams",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Local",
    "Scaffold",
    "State",
    "build_algorithm",
    "register_algorithm",
]
