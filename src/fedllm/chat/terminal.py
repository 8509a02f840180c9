"""`fedllm chat RUN`: a conversation in the terminal, each reply streamed as it is generated; with
``--compare-base`` the base model answers the same conversation after the run does."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fedllm.chat.model import ChatModel
from fedllm.data.schema import Message
from fedllm.eval.generation import Decoding

COMMANDS = {"/reset": "forget the conversation", "/exit": "leave (also Ctrl-D)", "/help": "this list"}


def chat_loop(model: ChatModel, decoding: Decoding, lines: Iterable[str], write: Callable[[str], None],
              compare_base: bool = False, system: str | None = None) -> list[Message]:
    """Read user turns from ``lines`` and write streamed replies; returns the conversation as it ended.
    The run's replies make the history; the base model's (``compare_base``) are shown beside them only."""
    history: list[Message] = [Message("system", system)] if system else []
    for turn, line in enumerate(lines):
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = history[:1] if system else []
            write("(conversation cleared)\n")
            continue
        if text == "/help":
            write("".join(f"  {c}  {what}\n" for c, what in COMMANDS.items()))
            continue
        history.append(Message("user", text))
        answers = [("run", True)] + ([("base", False)] if compare_base and model.has_adapter else [])
        reply = ""
        for label, adapter in answers:
            write(f"{label}> " if compare_base else "> ")
            pieces = []
            for piece in model.reply(history, decoding, adapter=adapter, seed=turn):
                pieces.append(piece)
                write(piece)
            write("\n")
            if adapter:
                reply = "".join(pieces)
        history.append(Message("assistant", reply))
    return history
