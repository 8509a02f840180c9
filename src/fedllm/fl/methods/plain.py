"""Plain local training (FedAvg, FedAvgM, FedOpt): no client hooks, no payload, no client state."""

from __future__ import annotations

from fedllm.fl.base import ClientMethod
from fedllm.fl.registries import CLIENT_METHODS


@CLIENT_METHODS.register("plain")
class Plain(ClientMethod):
    """The base class's defaults: every hook is a no-op."""
