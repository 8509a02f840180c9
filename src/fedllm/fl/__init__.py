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

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "ClientHooks",
    "ClientUpdate",
    "FLParams",
    "State",
    "build_algorithm",
    "register_algorithm",
]
