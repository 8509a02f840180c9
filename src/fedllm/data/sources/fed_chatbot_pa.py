"""Fed-ChatbotPA (FedLLM-Bench): Chatbot Arena votes as preference pairs, one client per user.

Same battles as Fed-ChatbotIT (:mod:`fedllm.data.sources.fed_chatbot_it`): prompt = the user's
first turn, chosen = the winning model's reply, rejected = the losing model's; ties ("tie",
"tie (bothbad)") dropped, and pairs whose two replies are the same text (nothing to prefer); one
client per judge with at least 5 pairs (paper: 747 clients, 9,508 pairs). ``turns`` as for
Fed-ChatbotIT.
"""

from __future__ import annotations

from types import MappingProxyType

from fedllm.data.schema import Message, PreferenceSample, Sample
from fedllm.data.sources import register_source
from fedllm.data.sources.fed_chatbot_it import ARENA_HUB_ID, ArenaSource
from fedllm.data.sources.hub import INPUT_KWARGS


@register_source("fed-chatbotpa")
class FedChatbotPA(ArenaSource):
    """Fed-ChatbotPA: (question, preferred reply, rejected reply) of each user's votes."""

    description = (
        "FedLLM-Bench Fed-ChatbotPA: lmsys/chatbot_arena_conversations as DPO pairs (first user turn, winner's "
        "reply, loser's reply; ties dropped), one client per judge with >= 5 pairs (paper: 747 clients, 9,508 pairs)."
    )
    construction = (
        "ties dropped; prompt = first user turn, chosen = the winner's reply to it, rejected = the loser's; pairs "
        "with identical replies dropped; one client per `judge` with >= min_samples pairs."
    )
    default_kwargs = MappingProxyType(
        {**INPUT_KWARGS, "hub_id": ARENA_HUB_ID, "turns": "first", "min_samples": 5, "max_clients": None}
    )

    def sample_of(self, question: str, chosen: str, rejected: str) -> Sample | str:
        if chosen.strip() == rejected.strip():
            return "identical_responses"  # nothing to prefer
        return PreferenceSample((Message("user", question),), chosen, rejected)
