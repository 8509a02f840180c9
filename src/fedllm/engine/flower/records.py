"""How fedllm's requests travel in Flower messages: one ConfigRecord holding a JSON header and, for
rounds and evaluations, one bytes blob (a fedllm message or a safetensors adapter), so what Flower
carries is exactly what the in-process engine counts."""

from __future__ import annotations

import json
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

KEY = "fedllm"
CENSUS = "query.fedllm_census"
TRAIN = "train.fedllm_round"
EVALUATE = "evaluate.fedllm_heldout"


def pack(header: dict[str, Any], blob: bytes = b"") -> RecordDict:
    return RecordDict({KEY: ConfigRecord({"header": json.dumps(header), "blob": blob})})


def unpack(content: RecordDict) -> tuple[dict[str, Any], bytes]:
    """The header and blob of a fedllm record; ValueError if the content is not one."""
    try:
        rec = content[KEY]
        header = json.loads(rec["header"])
        blob = rec["blob"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a fedllm message ({e})") from None
    if not isinstance(header, dict) or not isinstance(blob, bytes):
        raise ValueError("not a fedllm message (bad header or blob)")
    return header, blob


def reply(to: Message, header: dict[str, Any], blob: bytes = b"") -> Message:
    return Message(pack(header, blob), reply_to=to)
