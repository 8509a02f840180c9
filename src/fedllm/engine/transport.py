"""Transports carry instructions to clients and their replies back, as bytes. The in-process one runs
each client here, one after another, through the very messages a network transport would send."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from fedllm.data.schema import ClientData
from fedllm.engine.client import ClientRuntime, StepCallback, serve_round
from fedllm.engine.messages import EXACT, Instruction, Reply
from fedllm.fl.codec import WireSpec


@dataclass
class Exchange:
    """One client's round as the server saw it: the reply (or why there is none) and the bytes of both
    messages."""

    client_id: str
    reply: Reply | None  # None: no usable reply came back (``failure`` says why)
    bytes_down: int  # the serialized instruction
    bytes_up: int  # the serialized reply (0 if none)
    failure: str | None = None


class Transport(Protocol):
    def run(self, instructions: Iterable[Instruction]) -> Iterator[Exchange]:
        """Deliver each instruction and yield one exchange per instruction as replies come back (a
        network transport yields a failed exchange for a client that did not answer in time)."""
        ...


class InProcessTransport:
    """The simulation's transport: clients share this process and its base model."""

    def __init__(self, runtime: ClientRuntime, client_data: Callable[[str], ClientData],
                 on_step: StepCallback | None = None, wire: WireSpec = EXACT) -> None:
        self.runtime = runtime
        self.client_data = client_data
        self.on_step = on_step
        self.wire = wire  # how instructions travel (comm.down)

    def run(self, instructions: Iterable[Instruction]) -> Iterator[Exchange]:
        for ins in instructions:
            down = ins.to_bytes(self.wire)
            up = serve_round(down, self.client_data(ins.client_id), self.runtime, self.on_step)
            yield Exchange(ins.client_id, Reply.from_bytes(up), len(down), len(up))
