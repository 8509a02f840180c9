"""Prompt templates and the tokenisation used by SFT training, evaluation and DPO alike.

A template renders a conversation into text segments, each flagged trainable or not: the trainable
segments are exactly the assistant replies together with the token text that closes them (EOS or
end-of-turn). Encoding tokenises the joined text once, with character offsets, and trains a token
iff its span (less leading whitespace) lies inside a trainable segment, so BPE merges across segment
boundaries cannot shift the loss mask. Generation prompts (`prompt_text`) are the same renderer with
the assistant header appended, hence the training text up to the reply (for vicuna up to the
separator space, which byte-level BPE generates as part of the reply's first token).

Text is tokenised with add_special_tokens=False: templates spell out BOS and closing tokens, so
callers tokenising `prompt_text` for generation must do the same.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from fedllm.data.schema import InstructionSample, Message, PreferenceSample
from fedllm.registry import Registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
SFT_KEYS = ("input_ids", "labels")
PREFERENCE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class TemplateError(ValueError):
    """A chat template cannot be split into prompt and trainable reply segments."""


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; trainable pieces are assistant replies plus their closing token."""

    text: str
    trainable: bool


@runtime_checkable
class Template(Protocol):
    """Renders a conversation into segments; the same rendering serves training and generation."""

    name: str

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of the conversation, with the assistant header appended if add_generation_prompt."""
        ...


def _merge(segments: Sequence[Segment]) -> list[Segment]:
    """Drop empty segments and join neighbours of the same kind, so renders compare simply."""
    out: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if out and out[-1].trainable == seg.trainable:
            out[-1] = Segment(out[-1].text + seg.text, seg.trainable)
        else:
            out.append(seg)
    return out


def _bos_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token text if the tokenizer prepends it by default (Llama-style), else "".

    Hand-written templates are tokenised with add_special_tokens=False like chat templates are, so
    they spell out the BOS that the original Alpaca/FastChat training got from the tokenizer.
    """
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos is None or bos_id is None:
        return ""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos_id else ""


def _require_eos(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's EOS text, which closes every assistant reply of the hand-written templates."""
    if not tokenizer.eos_token:
        raise TemplateError("the tokenizer has no eos_token to close assistant replies with")
    return str(tokenizer.eos_token)


def _split_system(messages: Sequence[Message], default: str) -> tuple[str, Sequence[Message]]:
    """A leading system message replaces the template's default system text."""
    if messages and messages[0].role == "system":
        return messages[0].content, messages[1:]
    return default, messages


TEMPLATES: Registry[Callable[[PreTrainedTokenizerBase], Template]] = Registry("template")
"""Template name -> class (a factory: tokenizer -> template); one ``@TEMPLATES.register(name)`` line each."""


@TEMPLATES.register("chat")
class ChatTemplate:
    """The tokenizer's own Jinja chat template; reply spans are found by rendering prefixes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("the tokenizer has no chat_template; use the 'alpaca' or 'vicuna' template")
        self.tokenizer = tokenizer

    def _apply(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """Render messages with the tokenizer's Jinja template as text."""
        return self.tokenizer.apply_chat_template(
            [m.to_dict() for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of the rendered chat; raises TemplateError if the template is not prefix-stable."""
        full = self._apply(messages, add_generation_prompt)
        segments: list[Segment] = []
        pos = 0
        for i, msg in enumerate(messages):
            if msg.role != "assistant":
                continue
            if i == 0:
                raise TemplateError("the 'chat' template cannot place an assistant message that opens a conversation")
            before = self._apply(messages[:i], True)
            through = self._apply(messages[: i + 1], False)
            if not (through.startswith(before) and full.startswith(through) and len(before) >= pos):
                raise TemplateError(
                    f"the chat template is not prefix-stable at message {i}: rendering the conversation up to an "
                    "assistant turn (with the generation prompt) is not a prefix of rendering it with that turn, "
                    "so the reply cannot be located; use the 'alpaca' or 'vicuna' template instead"
                )
            reply = through[len(before) :].rstrip()
            segments += [Segment(full[pos : len(before)], False), Segment(reply, True)]
            pos = len(before) + len(reply)
        segments.append(Segment(full[pos:], False))
        return _merge(segments)


class _TextTemplate:
    """Base of the hand-written templates: replies close with EOS; BOS is spelled out if the tokenizer adds one."""

    name: str

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.eos = _require_eos(tokenizer)
        self.bos = _bos_text(tokenizer)


@TEMPLATES.register("alpaca")
class AlpacaTemplate(_TextTemplate):
    """Stanford Alpaca prompt; multi-turn repeats Instruction/Response blocks, a system message replaces the preamble.

    Follows alpaca-lora's "### Response:\\n" (a newline before the reply) so that the reply's first word
    is a separate token from the prompt header.
    """

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[Segment]:
        """Blocks joined by a blank line: preamble, '### Instruction:\\n{q}', '### Response:\\n{a}<eos>'."""
        preamble, rest = _split_system(messages, ALPACA_PREAMBLE)
        blocks: list[list[Segment]] = [[Segment(preamble, False)]] if preamble else []
        for msg in rest:
            if msg.role == "assistant":
                blocks.append([Segment("### Response:\n", False), Segment(msg.content + self.eos, True)])
            elif msg.role == "user":
                blocks.append([Segment(f"### Instruction:\n{msg.content}", False)])
            else:
                blocks.append([Segment(msg.content, False)])
        if add_generation_prompt:
            blocks.append([Segment("### Response:\n", False)])
        segments = [Segment(self.bos, False)]
        for k, block in enumerate(blocks):
            segments += ([Segment("\n\n", False)] if k else []) + block
        return _merge(segments)


@TEMPLATES.register("vicuna")
class VicunaTemplate(_TextTemplate):
    """Vicuna v1.1 as FastChat renders it: '{system} USER: {q} ASSISTANT: {a}<eos>USER: ...'."""

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> list[Segment]:
        """FastChat's ADD_COLON_TWO style with sep ' ' and sep2 = the tokenizer's EOS."""
        system, rest = _split_system(messages, VICUNA_SYSTEM)
        segments = [Segment(self.bos + system + " ", False)]
        for msg in rest:
            if msg.role == "assistant":
                # The space after the colon stays in the prompt: generation starts right after "ASSISTANT:".
                segments += [Segment("ASSISTANT:", False), Segment(" ", False), Segment(msg.content + self.eos, True)]
            elif msg.role == "user":
                segments.append(Segment(f"USER: {msg.content} ", False))
            else:
                segments.append(Segment(msg.content + " ", False))
        if add_generation_prompt:
            segments.append(Segment("ASSISTANT:", False))
        return _merge(segments)


def get_template(name: str, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The registered template `name` bound to `tokenizer`; ValueError names the known templates."""
    return TEMPLATES.lookup(name)(tokenizer)


def prompt_text(messages: Sequence[Message], template: Template) -> str:
    """The generation prompt (assistant header appended); the training render's prefix before the reply."""
    return "".join(seg.text for seg in template.render(messages, add_generation_prompt=True))


@dataclass
class _Encoded:
    """Token ids, their labels, and each token's end offset in the rendered text."""

    input_ids: list[int]
    labels: list[int]
    ends: list[int]


def _encode_segments(segments: Sequence[Segment], tokenizer: PreTrainedTokenizerBase) -> _Encoded:
    """Tokenise the joined segments once and label the tokens whose span lies in a trainable segment.

    A token's leading whitespace is ignored when placing it, so a byte-level token like ' Paris' that
    starts on the separator before a reply still counts as part of the reply.
    """
    text = "".join(seg.text for seg in segments)
    spans: list[tuple[int, int]] = []
    pos = 0
    for seg in segments:
        if seg.trainable:
            spans.append((pos, pos + len(seg.text)))
        pos += len(seg.text)
    starts = [s for s, _ in spans]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels: list[int] = []
    ends: list[int] = []
    for tok_id, (begin, end) in zip(ids, enc["offset_mapping"]):
        core = begin
        while core < end and text[core].isspace():
            core += 1
        if core == end:  # an all-whitespace token is placed by its full span
            core = begin
        k = bisect_right(starts, core) - 1
        inside = end > core and k >= 0 and end <= spans[k][1]
        labels.append(tok_id if inside else IGNORE_INDEX)
        ends.append(end)
    return _Encoded(ids, labels, ends)


def _check_max_length(max_length: int) -> None:
    """Reject non-positive length limits early with a clear message."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")


def encode_sft(
    sample: InstructionSample, template: Template, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, Any]:
    """input_ids/labels (-100 off the assistant replies) and num_trainable, truncated on the right to max_length."""
    _check_max_length(max_length)
    enc = _encode_segments(template.render(sample.messages), tokenizer)
    labels = enc.labels[:max_length]
    return {
        "input_ids": enc.input_ids[:max_length],
        "labels": labels,
        "num_trainable": sum(label != IGNORE_INDEX for label in labels),
    }


def _encode_reply(
    prompt: Sequence[Message], reply: str, template: Template, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[int], list[int]]:
    """Ids and labels of prompt + reply with only the reply trained; the prompt is cut from the left first."""
    segments = template.render([*prompt, Message("assistant", reply)])
    last = max((i for i, seg in enumerate(segments) if seg.trainable), default=-1)
    if last < 0:
        raise TemplateError(f"template {template.name!r} rendered no trainable reply")
    reply_start = sum(len(seg.text) for seg in segments[:last])
    enc = _encode_segments(segments, tokenizer)
    split = sum(end <= reply_start for end in enc.ends)  # offsets are monotonic, so this counts the prompt tokens
    prompt_ids, reply_ids, reply_labels = enc.input_ids[:split], enc.input_ids[split:], enc.labels[split:]
    keep = max(0, max_length - len(reply_ids))
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
    reply_ids, reply_labels = reply_ids[:max_length], reply_labels[:max_length]
    return prompt_ids + reply_ids, [IGNORE_INDEX] * len(prompt_ids) + reply_labels


def encode_preference(
    sample: PreferenceSample, template: Template, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[int]]:
    """chosen_/rejected_ input_ids and labels for DPO: prompt masked, reply plus closing token trained."""
    _check_max_length(max_length)
    out: dict[str, list[int]] = {}
    for kind, reply in (("chosen", sample.chosen), ("rejected", sample.rejected)):
        out[f"{kind}_input_ids"], out[f"{kind}_labels"] = _encode_reply(
            sample.prompt, reply, template, tokenizer, max_length
        )
    return out


def collate(features: list[dict[str, Any]], pad_id: int, keys: Sequence[str] = SFT_KEYS) -> dict[str, Tensor]:
    """Right-pad the keyed id lists to the batch's longest (labels with -100) and add attention masks.

    All keys share one padded length, so DPO's chosen/rejected tensors can be concatenated; with the
    default keys, features that only hold the preference keys are collated as a DPO batch.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    if tuple(keys) == SFT_KEYS and SFT_KEYS[0] not in features[0] and PREFERENCE_KEYS[0] in features[0]:
        keys = PREFERENCE_KEYS
    width = max(len(f[key]) for f in features for key in keys)
    batch: dict[str, Tensor] = {}
    for key in keys:
        fill = IGNORE_INDEX if key.endswith("labels") else pad_id
        batch[key] = torch.tensor([list(f[key]) + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)
        if key.endswith("input_ids"):
            mask_key = key[: -len("input_ids")] + "attention_mask"
            batch[mask_key] = torch.tensor(
                [[1] * len(f[key]) + [0] * (width - len(f[key])) for f in features], dtype=torch.long
            )
    return batch
