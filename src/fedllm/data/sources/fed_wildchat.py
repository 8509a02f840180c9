"""Fed-WildChat (FedLLM-Bench): real ChatGPT conversations, one client per (hashed) IP address.

WildChat logs users' conversations with ChatGPT together with a hashed IP address; FedLLM-Bench
makes each IP a client and keeps the 100 largest for the single-turn dataset (paper: 100 clients,
52,703 samples) and 50 for the multi-turn one.

* ``fed-wildchat`` (single-turn): sample = a conversation's first user turn and the assistant's
  reply. The paper does not say whether longer conversations were cut to their first exchange or
  left out; ``turns="first"`` (default) cuts them, ``turns="single"`` keeps only one-turn
  conversations (``turn`` == 1) and counts the others as dropped.
* ``fed-wildchat-mt`` (multi-turn): sample = the whole conversation (a trailing unanswered user turn
  is cut).

Both keep IPs with at least ``min_samples`` (200) samples and then the ``max_clients`` largest.
Source: the IP hashes are published in allenai/WildChat-1M (field ``hashed_ip``, top level and per
turn); the first release, allenai/WildChat, has none, so it is not the default (a copy that has
``hashed_ip`` only inside the turns works too: the first user turn's is used). ``toxic``
conversations are dropped by default (WildChat-1M publishes only non-toxic ones anyway).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fedllm.data.schema import InstructionSample
from fedllm.data.sources import register_source
from fedllm.data.sources.hub import (
    INPUT_KWARGS,
    Built,
    Drops,
    PublicSource,
    Row,
    Rows,
    chat_turns,
    check_choice,
    conversation_sample,
    first_exchange,
    select_clients,
    user_turns,
)

WILDCHAT_HUB_ID = "allenai/WildChat-1M"
TURN_POLICIES = ("first", "single")


def _client_ip(row: Row) -> str | None:
    ip = row.data.get("hashed_ip")
    if isinstance(ip, str) and ip.strip():
        return ip
    for turn in row.data.get("conversation") or ():
        if isinstance(turn, Mapping) and turn.get("role") == "user":
            ip = turn.get("hashed_ip")
            return ip if isinstance(ip, str) and ip.strip() else None
    return None


class _WildChat(PublicSource):
    """Shared reading of WildChat rows; subclasses turn a conversation into a sample."""

    hub_id = WILDCHAT_HUB_ID
    required_fields = ("conversation",)
    optional_fields = ("hashed_ip", "turn", "language", "toxic", "redacted", "model")

    def sample(self, row: Row, turns: list[tuple[str, Any]], params: Mapping[str, Any]) -> InstructionSample | str:
        raise NotImplementedError  # pragma: no cover

    def _sample_of(self, row: Row, params: Mapping[str, Any], languages: set[str] | None) -> tuple[str, InstructionSample] | str:
        if params["drop_toxic"] and row.data.get("toxic") is True:
            return "toxic"
        if languages is not None and row.data.get("language") not in languages:
            return "language_not_selected"
        ip = _client_ip(row)
        if ip is None:
            return "no_hashed_ip"
        turns = chat_turns(row, "conversation", self.name)
        sample = self.sample(row, turns, params) if turns else "malformed_conversation"
        return sample if isinstance(sample, str) else (ip, sample)

    def construct(self, rows: Rows, params: Mapping[str, Any], drops: Drops) -> Built:
        """Two passes over the input: count each IP's samples, then make the samples of the IPs kept
        only (WildChat has ~1M conversations and ~200K IPs; the kept ones hold a few percent)."""
        languages = set(params["languages"]) if params["languages"] is not None else None
        counts: dict[str, int] = defaultdict(int)
        for row in rows:
            got = self._sample_of(row, params, languages)
            if isinstance(got, str):
                drops.row(got)
            else:
                counts[got[0]] += 1
        sizes = {ip: range(n) for ip, n in counts.items()}
        kept = select_clients(sizes, drops, min_samples=params["min_samples"], max_clients=params["max_clients"])
        groups: dict[str, list[InstructionSample]] = {ip: [] for ip in kept}
        for row in rows:
            ip = _client_ip(row)
            if ip in groups:
                got = self._sample_of(row, params, languages)
                if not isinstance(got, str):
                    groups[ip].append(got[1])
        return Built(groups)


@register_source("fed-wildchat")
class FedWildChat(_WildChat):
    """Fed-WildChat single-turn: first exchange of each conversation, one client per IP."""

    description = (
        "FedLLM-Bench Fed-WildChat (single-turn): WildChat-1M first user turn + reply, one client per hashed IP, "
        "the 100 largest with >= 200 samples (paper: 100 clients, 52,703 samples)."
    )
    construction = (
        "toxic conversations dropped (drop_toxic); sample = first user turn + assistant reply (turns='first': every "
        "conversation; 'single': turn == 1 only); one client per `hashed_ip` with >= min_samples, the max_clients largest."
    )
    default_kwargs = MappingProxyType(
        {**INPUT_KWARGS, "hub_id": WILDCHAT_HUB_ID, "turns": "first", "min_samples": 200, "max_clients": 100,
         "drop_toxic": True, "languages": None}
    )

    def sample(self, row: Row, turns: list[tuple[str, Any]], params: Mapping[str, Any]) -> InstructionSample | str:
        check_choice(self.name, "turns", params["turns"], TURN_POLICIES)
        if params["turns"] == "single" and user_turns(row, turns) != 1:
            return "multi_turn"
        exchange = first_exchange(turns)
        return exchange if isinstance(exchange, str) else InstructionSample.single_turn(*exchange)


@register_source("fed-wildchat-mt")
class FedWildChatMT(_WildChat):
    """Fed-WildChat multi-turn: whole conversations, one client per IP."""

    description = (
        "FedLLM-Bench Fed-WildChat (multi-turn): WildChat-1M whole conversations, one client per hashed IP, "
        "the 50 largest with >= 200 samples."
    )
    construction = (
        "toxic conversations dropped (drop_toxic); sample = the whole conversation (trailing user turn cut); one "
        "client per `hashed_ip` with >= min_samples, the max_clients largest."
    )
    default_kwargs = MappingProxyType(
        {**INPUT_KWARGS, "hub_id": WILDCHAT_HUB_ID, "min_samples": 200, "max_clients": 50, "drop_toxic": True,
         "languages": None}
    )

    def sample(self, row: Row, turns: list[tuple[str, Any]], params: Mapping[str, Any]) -> InstructionSample | str:
        return conversation_sample(turns)
