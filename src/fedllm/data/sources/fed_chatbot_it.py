"""Fed-ChatbotIT (FedLLM-Bench): Chatbot Arena battles as instruction data, one client per user.

lmsys/chatbot_arena_conversations holds 33K battles: a user (``judge``) asked two anonymous models
the same question and voted (``winner``: "model_a", "model_b", "tie" or "tie (bothbad)").
FedLLM-Bench keeps the preferred answer as the response: instruction = the user's first turn,
response = the winning model's reply to it; ties name no preferred answer and are dropped; one
client per judge, users with at least 10 samples (paper: 237 clients, 6,166 samples; single-turn).

Multi-turn battles (``turn`` > 1): the paper's dataset is single-turn but does not say whether
longer battles were cut to their first exchange or left out. ``turns="first"`` (default) keeps the
first exchange of every battle (the vote was cast on the whole battle, whose opening reply the
winner also gave); ``turns="single"`` keeps only one-turn battles and counts the others as dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from fedllm.data.schema import InstructionSample, Sample
from fedllm.data.sources import register_source
from fedllm.data.sources.hub import (
    INPUT_KWARGS,
    Built,
    Drops,
    PublicSource,
    Row,
    chat_turns,
    check_choice,
    first_exchange,
    select_clients,
    text_field,
    user_turns,
)

ARENA_HUB_ID = "lmsys/chatbot_arena_conversations"
ARENA_FIELDS = ("question_id", "winner", "judge", "conversation_a", "conversation_b")
ARENA_OPTIONAL = ("turn", "model_a", "model_b", "language", "anony")
TIES = ("tie", "tie (bothbad)")
TURN_POLICIES = ("first", "single")


def arena_battle(row: Row, source: str, turns: str, drops: Drops) -> tuple[str, str, str, str] | None:
    """(judge, question, winner's first reply, loser's first reply) of one battle, or None after
    counting in `drops` why it has none (tie, unknown_winner, multi_turn, no_judge, malformed or empty)."""
    check_choice(source, "turns", turns, TURN_POLICIES)
    winner = text_field(row, "winner", source)
    if winner in TIES:
        drops.row("tie")
        return None
    if winner not in ("model_a", "model_b"):
        drops.row("unknown_winner")
        return None
    judge = text_field(row, "judge", source)
    if judge is None:
        drops.row("no_judge")
        return None
    conv_a, conv_b = chat_turns(row, "conversation_a", source), chat_turns(row, "conversation_b", source)
    if conv_a is None or conv_b is None:
        drops.row("malformed_conversation")
        return None
    if turns == "single" and user_turns(row, conv_a) != 1:
        drops.row("multi_turn")
        return None
    ex_a, ex_b = first_exchange(conv_a), first_exchange(conv_b)
    for ex in (ex_a, ex_b):
        if isinstance(ex, str):
            drops.row(ex)
            return None
    (question, reply_a), (_, reply_b) = ex_a, ex_b  # both conversations open with the same question
    return (judge, question, reply_a, reply_b) if winner == "model_a" else (judge, question, reply_b, reply_a)


class ArenaSource(PublicSource):
    """Chatbot Arena battles, one client per judge: subclasses make a sample of (question, winner's
    reply, loser's reply) in `sample_of`, or return the reason it makes none."""

    hub_id = ARENA_HUB_ID
    required_fields = ARENA_FIELDS
    optional_fields = ARENA_OPTIONAL

    def sample_of(self, question: str, chosen: str, rejected: str) -> Sample | str:
        raise NotImplementedError  # pragma: no cover

    def construct(self, rows: Iterable[Row], params: Mapping[str, Any], drops: Drops) -> Built:
        groups: dict[str, list[Sample]] = defaultdict(list)
        for row in rows:
            battle = arena_battle(row, self.name, params["turns"], drops)
            if battle is None:
                continue
            judge, *texts = battle
            sample = self.sample_of(*texts)
            if isinstance(sample, str):
                drops.row(sample)
            else:
                groups[judge].append(sample)
        return Built(select_clients(groups, drops, min_samples=params["min_samples"], max_clients=params["max_clients"]))


@register_source("fed-chatbotit")
class FedChatbotIT(ArenaSource):
    """Fed-ChatbotIT: the user's question and the answer they voted for, one client per user."""

    description = (
        "FedLLM-Bench Fed-ChatbotIT: lmsys/chatbot_arena_conversations, instruction = first user turn, response = "
        "the winning model's reply (ties dropped), one client per judge with >= 10 samples (paper: 237 clients, "
        "6,166 samples)."
    )
    construction = (
        "ties dropped; instruction = first user turn, response = the winner's reply to it (turns='first': every "
        "battle's first exchange; 'single': one-turn battles only); one client per `judge` with >= min_samples."
    )
    default_kwargs = MappingProxyType(
        {**INPUT_KWARGS, "hub_id": ARENA_HUB_ID, "turns": "first", "min_samples": 10, "max_clients": None}
    )

    def sample_of(self, question: str, chosen: str, rejected: str) -> Sample | str:
        return InstructionSample.single_turn(question, chosen)
