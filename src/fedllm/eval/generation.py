"""Batched generation and log-likelihood scoring with the shared base model (and its adapter).

Generation is our own small decoding loop over the KV cache rather than ``model.generate``: every
request carries its own seed, so a sampled answer depends on the item and not on which other items
share its batch, and stop strings end a row as soon as they appear. Prompts are rendered with the
same template as training (``formatting.prompt_text``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fedllm.eval.kv_cache import growing_cache
from fedllm.models.peft_methods.virtual import decoding_start, input_logits
from fedllm.models.precision import Precision


@dataclass(frozen=True)
class Decoding:
    """How one benchmark decodes: temperature 0 is greedy; top-p sampling otherwise."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid decoding settings {self}")

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class GenRequest:
    """One generation: a prompt (already rendered text) and how to decode it; ``seed`` drives sampling."""

    key: str
    prompt: str
    decoding: Decoding
    seed: int = 0


@dataclass
class _Row:
    request: GenRequest
    ids: list[int]
    out: list[int] = field(default_factory=list)
    done: bool = False
    generator: torch.Generator | None = None


def _sample(logits: torch.Tensor, d: Decoding, gen: torch.Generator | None) -> int:
    """Next token for one row: argmax when greedy, else temperature + nucleus sampling with the row's generator."""
    if d.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / d.temperature, dim=-1)
    if d.top_p < 1:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < d.top_p  # always keeps the most likely token
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return int(idx[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class TextModel:
    """A causal LM and its tokenizer, ready to generate and score text (adapter state as loaded)."""

    def __init__(self, model: Any, tokenizer: Any, precision: Precision, stop_token_ids: Sequence[int] = ()) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        eos = tokenizer.eos_token_id
        self.stop_ids = {int(i) for i in stop_token_ids} | ({int(eos)} if eos is not None else set())
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)

    def encode(self, text: str) -> list[int]:
        # templates spell out BOS and closing tokens themselves (see data/formatting.py)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, requests: Sequence[GenRequest], batch_size: int = 8,
                 on_done: Callable[[GenRequest, str], None] | None = None) -> list[str]:
        """Answers in request order. Requests sharing a length limit and stop strings are batched together
        (sorted by prompt length); temperature and top-p are applied per row, so MT-Bench's
        per-category temperatures still share batches."""
        rows = [_Row(r, self.encode(r.prompt)) for r in requests]
        for row in rows:
            if row.request.decoding.temperature > 0:
                row.generator = torch.Generator(device="cpu").manual_seed(row.request.seed)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, row in enumerate(rows):
            d = row.request.decoding
            groups.setdefault((d.max_new_tokens, d.stop), []).append(i)
        answers: list[str | None] = [None] * len(rows)
        was_training = self.model.training
        self.model.eval()
        try:
            for (max_new, stop), idx in groups.items():
                idx.sort(key=lambda i: len(rows[i].ids))
                for j in range(0, len(idx), batch_size):
                    batch = [rows[i] for i in idx[j:j + batch_size]]
                    texts = self._generate_batch(batch, max_new, stop)
                    for i, text in zip(idx[j:j + batch_size], texts):
                        answers[i] = text
                        if on_done is not None:
                            on_done(rows[i].request, text)
        finally:
            self.model.train(was_training)
        return [a if a is not None else "" for a in answers]

    def _generate_batch(self, batch: list[_Row], max_new_tokens: int, stop: tuple[str, ...]) -> list[str]:
        device = self.precision.device
        width = max(len(r.ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, r in enumerate(batch):  # left padding: every row's next token is at the last position
            ids[b, width - len(r.ids):] = torch.tensor(r.ids)
            mask[b, width - len(r.ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        step, first, mask = decoding_start(self.model, ids, mask, positions)  # virtual tokens (prompt learning)
        past, step_pos = first.pop("past_key_values", None), first.pop("position_ids")
        if past is None:  # appends in place instead of re-copying the whole cache at every step
            past = growing_cache(self.model.config, width + max_new_tokens)
        first.pop("attention_mask")
        step_ids = ids
        active = list(range(len(batch)))  # rows still generating, in cache order
        for _ in range(max_new_tokens):
            with self.precision.autocast():
                out = step(**(first or {"input_ids": step_ids}), attention_mask=mask, position_ids=step_pos,
                           past_key_values=past, use_cache=True, logits_to_keep=1)
            first = {}
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            nxt = []
            for j, b in enumerate(active):
                r = batch[b]
                if r.done:  # only when the cache cannot drop rows
                    nxt.append(self.pad_id)
                    continue
                tok = _sample(logits[j], r.request.decoding, r.generator)
                if tok in self.stop_ids:
                    r.done = True
                else:
                    r.out.append(tok)
                    if stop and _cut_at_stop(self.tokenizer.decode(r.out[-64:]), stop)[1]:
                        r.done = True
                nxt.append(tok)
            keep = [j for j, b in enumerate(active) if not batch[b].done]
            if not keep:
                break
            if not hasattr(past, "batch_select_indices"):  # a cache that cannot drop rows: finished ones idle
                keep = list(range(len(active)))
            if len(keep) < len(active) and hasattr(past, "batch_select_indices"):  # drop finished rows' compute
                index = torch.tensor(keep, device=device)
                past.batch_select_indices(index)
                mask, step_pos = mask[index], step_pos[index]
                nxt = [nxt[j] for j in keep]
                active = [active[j] for j in keep]
            step_ids = torch.tensor(nxt, dtype=torch.long, device=device)[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long, device=device)], dim=1)
        texts = []
        for r in batch:
            text = self.tokenizer.decode(r.out, skip_special_tokens=True)
            texts.append(_cut_at_stop(text, stop)[0] if stop else text)
        return texts

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def continuation_logprobs(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens after ``context`` (one forward when
        every continuation is a single token, as MMLU's " A".." D" are)."""
        ctx = self.encode(context)
        conts = []
        for c in continuations:  # tokenise jointly, as the text would be read; separately if BPE merges across
            joint = self.encode(context + c)
            conts.append(joint[len(ctx):] if joint[: len(ctx)] == ctx else self.encode(c))
        if any(not c for c in conts):
            raise ValueError(f"a continuation of {continuations} encodes to no tokens")
        was_training = self.model.training
        self.model.eval()
        try:
            if all(len(c) == 1 for c in conts):
                logp = self._logprobs(ctx, last_only=True)[-1]
                return [float(logp[c[0]]) for c in conts]
            scores = []
            for c in conts:
                logp = self._logprobs(ctx + c[:-1])
                scores.append(float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(c))))
            return scores
        finally:
            self.model.train(was_training)

    def _logprobs(self, ids: list[int], last_only: bool = False) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.precision.device)
        with self.precision.autocast():
            logits = input_logits(self.model, x, last_only=last_only)[0]
        return torch.log_softmax(logits.float(), dim=-1).cpu()
