"""Transports carry instructions to clients and their replies back, as bytes. The in-process one runs
each client here, one after another, through the very messages a network transport would send."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from fedllm.data.schema import ClientData
from fedllm.engine.client import ClientRuntime, StepCallback, run_client_round
from fedllm.engine.messages import Instruction, Reply


@dataclass
class Exchange:
    """One client's round as the server saw it: the reply and the bytes of both messages."""

    reply: Reply
    bytes_down: int  # the serialized instruction
    bytes_up: int  # the serialized reply


class Transport(Protocol):
    def run(self, instructions: Iterable[Instruction]) -> Iterator[Exchange]:
        """Deliver each instruction and yield the exchanges as replies come back."""
        ...


class InProcessTransport:
    """The simulation's transport: clients share this process and its base model."""

    def __init__(self, runtime: ClientRuntime, client_data: Callable[[str], ClientData],
                 on_step: StepCallback | None = None) -> None:
        self.runtime = runtime
        self.client_data = client_data
        self.on_step = on_step

    def run(self, instructions: Iterable[Instruction]) -> Iterator[Exchange]:
        for ins in instructions:
            down = ins.to_bytes()
            received = Instruction.from_bytes(down)
            reply = run_client_round(received, self.client_data(received.client_id), self.runtime, self.on_step)
            up = reply.to_bytes()
            yield Exchange(Reply.from_bytes(up), len(down), len(up))
