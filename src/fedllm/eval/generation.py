"""Batched generation and log-likelihood scoring with the shared base model (and its adapter).

Generation is our own small decoding loop over the KV cache rather than ``model.generate``: every
request carries its own seed, so a sampled answer depends on the item and not on which other items
share its batch, and stop strings end a row as soon as they appear. Prompts that share a long prefix
(few-shot examples) run it once. Prompts are rendered with the same template as training
(``formatting.prompt_text``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fedllm.eval import decode_attention
from fedllm.eval.code_blocks import closed_block_defines
from fedllm.eval.drafts import PromptLookup
from fedllm.eval.kv_cache import DynamicLayer, GrowingLayer, growing_cache
from fedllm.models.peft_methods.virtual import decoding_start, input_logits, virtual_tokens
from fedllm.models.precision import Precision


@dataclass(frozen=True)
class Decoding:
    """How one benchmark decodes: temperature 0 is greedy; top-p sampling otherwise."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    # HumanEval: end the answer once a closed Python (or untagged) code block defines this function; the
    # block scored is then fixed (code_blocks.closed_block_defines), so what follows is never generated
    end_after_block_defining: str = ""

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid decoding settings {self}")

    def key(self) -> str:
        fields = asdict(self)
        if not self.end_after_block_defining:  # keys of answers cached before the field existed stay valid
            del fields["end_after_block_defining"]
        return json.dumps(fields, sort_keys=True)


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
    index: int = 0  # position in the request list
    out: list[int] = field(default_factory=list)
    steps: int = 0  # tokens sampled (stop tokens included)
    done: bool = False
    handed: bool = False  # the answer went to on_done
    generator: torch.Generator | None = None
    lookup: PromptLookup | None = None  # prompt and answer, indexed for drafts (greedy rows)


@dataclass
class _Batch:
    """The rows decoding together: their KV cache, attention mask (left padding), next positions and tokens."""

    rows: list[_Row]
    step: Any  # what runs a decoding step: the model, or its base with virtual tokens added once
    past: Any
    mask: torch.Tensor  # [rows, cached positions]
    pos: torch.Tensor  # [rows, 1]: each row's next position id (drafts rejected leave masked gaps in the cache)
    nxt: torch.Tensor  # [rows]: each row's next input token


@dataclass
class _Prefix:
    """Prompt tokens every row of a group starts with (a few-shot block), run once: its keys and values
    per layer, each [1, kv heads, tokens, head dim], copied into every batch that enters."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


MIN_SHARED_PREFIX = 64  # tokens; a chat template's system prompt alone is not worth a separate pass
DRAFT_TOKENS = 4  # prompt-lookup draft checked per greedy row and step (benchmarks/RESULTS.md (d⁶): 2 and 3 gain less)


def _common_prefix(token_lists: Sequence[list[int]]) -> int:
    """Length of the token prefix all lists share, leaving every list at least one token of its own."""
    shared = len(os.path.commonprefix(list(token_lists)))
    return max(min(shared, min(map(len, token_lists)) - 1), 0)


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


def _mergeable(past: Any) -> bool:
    """Whether rows can join this cache: full-attention layers that drop rows (not sliding windows)."""
    layers = getattr(past, "layers", None)
    return bool(layers) and hasattr(past, "batch_select_indices") and all(
        type(layer) in (GrowingLayer, DynamicLayer) and layer.keys is not None for layer in layers)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` with zeros in front along ``dim`` up to ``width`` (masked positions: attention never sees them)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _packing(batch: _Batch) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The cache positions each row keeps, in order ([rows, kept]; None: all of them), and the mask that
    results: moving each row's unmasked positions to the end (left padding) drops the gaps rejected drafts
    leave, which attention would otherwise keep reading."""
    width = int(batch.mask.sum(1).max())
    if width == batch.mask.shape[1]:
        return None, batch.mask
    order = torch.argsort(batch.mask, dim=1, stable=True)[:, -width:]  # masked columns first, then the rest in order
    return order, torch.gather(batch.mask, 1, order)


def _merge(a: _Batch, b: _Batch, max_new: int) -> _Batch:
    """One batch of both: the shorter cache left-padded with masked positions, rows stacked (gaps dropped);
    layer by layer, each cache copied once into the new one."""
    (keep_a, mask_a), (keep_b, mask_b) = _packing(a), _packing(b)
    width = max(mask_a.shape[1], mask_b.shape[1])
    a.past.layers = [GrowingLayer.stacked([(la.keys, la.values, keep_a), (lb.keys, lb.values, keep_b)], width,
                                          width + max_new, getattr(la, "store_dtype", None))
                     for la, lb in zip(a.past.layers, b.past.layers)]
    return _Batch(a.rows + b.rows, a.step, a.past, torch.cat([_left_pad(mask_a, width, 1), _left_pad(mask_b, width, 1)]),
                  torch.cat([a.pos, b.pos]), torch.cat([a.nxt, b.nxt]))


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class TextModel:
    """A causal LM and its tokenizer, ready to generate and score text (adapter state as loaded)."""

    def __init__(self, model: Any, tokenizer: Any, precision: Precision, stop_token_ids: Sequence[int] = (),
                 draft_tokens: int = DRAFT_TOKENS) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.precision = precision
        self.draft_tokens = draft_tokens  # 0: one token per row and step
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
        """Answers in request order, each handed to ``on_done`` as soon as it ends. Requests sharing a
        length limit and stop strings decode together (sorted by prompt length), up to ``batch_size`` at a
        time; when a quarter of the rows have finished, waiting requests take their places (continuous
        batching), so a batch does not idle at a few long answers. Temperature and top-p apply per row, so
        MT-Bench's per-category temperatures still share batches."""
        rows = [self._row(r, i) for i, r in enumerate(requests)]
        groups: dict[tuple[int, tuple[str, ...]], list[_Row]] = {}
        for row in rows:
            d = row.request.decoding
            groups.setdefault((d.max_new_tokens, d.stop), []).append(row)
        answers: list[str] = [""] * len(rows)

        def finish(row: _Row, stop: tuple[str, ...]) -> None:
            text = self.tokenizer.decode(row.out, skip_special_tokens=True)
            answers[row.index] = _cut_at_stop(text, stop)[0] if stop else text
            if on_done is not None:
                on_done(row.request, answers[row.index])

        with self._inference():
            for (max_new, stop), group in groups.items():
                self._decode_group(sorted(group, key=lambda r: len(r.ids)), batch_size, max_new, stop, finish)
        return answers

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """The model in eval mode (no dropout) and, where it uses SDPA, with drafts checked without copying
        the cache (``decode_attention``) for the block; then back as it was."""
        was_training = self.model.training
        config = getattr(self.model, "config", None)
        attention = getattr(config, "_attn_implementation", None)
        self.model.eval()
        if attention == "sdpa":
            config._attn_implementation = decode_attention.NAME
        try:
            yield
        finally:
            self.model.train(was_training)
            if attention == "sdpa":
                config._attn_implementation = attention

    def _row(self, request: GenRequest, index: int = 0) -> _Row:
        """A request's row, with its own seeded generator when it samples."""
        row = _Row(request, self.encode(request.prompt), index=index)
        if request.decoding.temperature > 0:
            row.generator = torch.Generator(device="cpu").manual_seed(request.seed)
        elif self.draft_tokens > 0:
            row.lookup = PromptLookup(row.ids)
        return row

    @torch.no_grad()
    def stream(self, request: GenRequest) -> Iterator[str]:
        """One answer as pieces of text while it is generated (a chat's streaming reply); the pieces join
        to what ``generate`` returns for the same request. A piece never ends inside a character."""
        row = self._row(request)
        d = request.decoding
        shown = ""
        with self._inference():
            batch = self._prefill([row], d.max_new_tokens, d.stop)
            while True:
                text = self.tokenizer.decode(row.out, skip_special_tokens=True)
                text = _cut_at_stop(text, d.stop)[0] if d.stop else text
                finished = row.done or row.steps >= d.max_new_tokens
                if len(text) > len(shown) and (finished or not text.endswith("\ufffd")) and text.startswith(shown):
                    yield text[len(shown):]
                    shown = text
                if finished:
                    return
                self._step(batch, d.stop)

    def _decode_group(self, waiting: list[_Row], batch_size: int, max_new: int, stop: tuple[str, ...],
                      finish: Callable[[_Row, tuple[str, ...]], None]) -> None:
        batch: _Batch | None = None
        refill = max(1, batch_size // 4)
        prefix = self._shared_prefix(waiting)
        while waiting or batch is not None:
            free = batch_size - (len(batch.rows) if batch is not None else 0)
            if waiting and (batch is None or (free >= refill and _mergeable(batch.past))):
                entering, waiting = waiting[:free], waiting[free:]
                new = self._prefill(entering, max_new, stop, prefix)
                batch = new if batch is None else _merge(batch, new, max_new)
            else:
                self._step(batch, stop)  # type: ignore[arg-type]
            batch = self._retire(batch, max_new, stop, finish)  # type: ignore[arg-type]

    def _shared_prefix(self, rows: Sequence[_Row]) -> _Prefix | None:
        """The group's common prompt prefix with its keys and values, when it is long enough to be worth
        running once (few-shot prompts) and the cache can take it; else None."""
        return self._prefix_kv(rows[0].ids[:_common_prefix([r.ids for r in rows])]) if len(rows) > 1 else None

    def _prefix_kv(self, ids: list[int]) -> _Prefix | None:
        """``ids`` run once, with their keys and values per layer; None when shorter than MIN_SHARED_PREFIX,
        before virtual tokens, or where the cache cannot take them."""
        if len(ids) < MIN_SHARED_PREFIX or virtual_tokens(self.model):
            return None
        past = growing_cache(self.model.config, len(ids), self._cache_dtype())
        if past is None:
            return None
        x = torch.tensor([ids], device=self.precision.device)
        positions = torch.arange(len(ids), device=x.device)[None]
        with self.precision.autocast():
            out = self.model(input_ids=x, attention_mask=torch.ones_like(x), position_ids=positions,
                             past_key_values=past, use_cache=True, logits_to_keep=1)
        if not _mergeable(out.past_key_values):
            return None
        return _Prefix(list(ids), [(layer.keys, layer.values) for layer in out.past_key_values.layers])

    def _prefill(self, rows: list[_Row], max_new: int, stop: tuple[str, ...], prefix: _Prefix | None = None) -> _Batch:
        """Run the prompts of rows entering the batch (left-padded) and sample their first tokens. With a
        shared prefix, only the rest of each prompt runs: every row's cache starts with the prefix's keys
        and values, then padding, then its own tokens ([prefix | pad | own], positions counted past the pad)."""
        device = self.precision.device
        skip = len(prefix.ids) if prefix is not None else 0
        width = max(len(r.ids) for r in rows) - skip
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):  # left padding: every row's next token is at the last position
            ids[b, width - len(r.ids) + skip:] = torch.tensor(r.ids[skip:])
            mask[b, width - len(r.ids) + skip:] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + skip
        if prefix is not None:  # the prefix's keys and values in front, then each row's own tokens
            step, first, pos = self.model, {"input_ids": ids}, positions
            past = self._cache_from(prefix, len(rows), skip + width + max_new)
            mask = torch.cat([mask.new_ones((len(rows), skip)), mask], dim=1)
        else:
            step, first, mask = decoding_start(self.model, ids, mask, positions)  # virtual tokens
            past, pos = first.pop("past_key_values", None), first.pop("position_ids")
            first.pop("attention_mask")
            if past is None:  # appends in place instead of re-copying the whole cache at every step
                past = growing_cache(self.model.config, width + max_new, self._cache_dtype())
        with self.precision.autocast():
            out = step(**first, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True,
                       logits_to_keep=1)
        return _Batch(rows, step, out.past_key_values, mask, pos[:, -1:] + 1,
                      self._sample_rows(rows, out.logits[:, -1, :], stop))

    def _cache_from(self, prefix: _Prefix, rows: int, capacity: int) -> Any:
        """A cache for ``rows`` rows of up to ``capacity`` positions, each starting with the prefix's keys and values."""
        past = growing_cache(self.model.config, capacity, self._cache_dtype())
        for layer, (k, v) in zip(past.layers, prefix.layers):
            layer.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
        return past

    def _cache_dtype(self) -> torch.dtype | None:
        """bf16 under bf16 autocast, whose attention casts keys and values to it anyway; else as computed."""
        return torch.bfloat16 if self.precision.name == "bf16" else None

    def _step(self, batch: _Batch, stop: tuple[str, ...]) -> None:
        """One decoding step of every row: its next token and, for a greedy row with a prompt-lookup draft,
        the draft checked in the same forward. A row keeps the draft's tokens up to the first that greedy
        decoding would not have chosen; the rejected ones stay in the cache, masked, and positions skip them."""
        device = self.precision.device
        drafts = self._drafts(batch)
        width = 1 + max(map(len, drafts), default=0)
        ids = torch.tensor([[tok, *d] + [self.pad_id] * (width - 1 - len(d)) for tok, d in zip(batch.nxt.tolist(), drafts)])
        fresh = torch.tensor([[1] * (1 + len(d)) + [0] * (width - 1 - len(d)) for d in drafts])  # positions rows fill
        batch.mask = torch.cat([batch.mask, fresh.to(device)], dim=1)
        with self.precision.autocast():
            out = batch.step(input_ids=ids.to(device), attention_mask=batch.mask,
                             position_ids=batch.pos + torch.arange(width, device=device),
                             past_key_values=batch.past, use_cache=True, logits_to_keep=width)
        batch.past = out.past_key_values
        logits = out.logits.float().cpu()
        nxt, advance = [], []
        for j, (r, d) in enumerate(zip(batch.rows, drafts)):
            tok, kept = self._check_draft(r, logits[j], d, stop)
            nxt.append(tok)
            advance.append(1 + kept)
            batch.mask[j, batch.mask.shape[1] - width + 1 + kept:] = 0
        batch.pos = batch.pos + torch.tensor(advance, device=device)[:, None]
        batch.nxt = torch.tensor(nxt, dtype=torch.long, device=device)

    def _drafts(self, batch: _Batch) -> list[list[int]]:
        """Each row's draft: none for sampling or finished rows, nor past its token budget, nor where the
        cache cannot hold masked gaps (sliding-window layers count positions, not unmasked ones)."""
        if self.draft_tokens <= 0 or not any(r.lookup for r in batch.rows) or not _mergeable(batch.past):
            return [[] for _ in batch.rows]
        return [r.lookup.draft(min(self.draft_tokens, r.request.decoding.max_new_tokens - r.steps - 1))
                if r.lookup is not None and not r.done else [] for r in batch.rows]

    def _check_draft(self, r: _Row, logits: torch.Tensor, draft: list[int], stop: tuple[str, ...]) -> tuple[int, int]:
        """(the row's next input token, how many draft tokens it kept): tokens are chosen at each position
        in turn, as one-token steps would, until one differs from the draft or the answer ends."""
        if r.done:  # only when the cache cannot drop rows
            return self.pad_id, 0
        for i in range(len(draft) + 1):
            tok = self._take(r, logits[i], stop)
            if i == len(draft) or tok != draft[i] or r.done or r.steps >= r.request.decoding.max_new_tokens:
                return tok, i
        raise AssertionError("unreachable")

    def _sample_rows(self, rows: list[_Row], logits: torch.Tensor, stop: tuple[str, ...]) -> torch.Tensor:
        """Each unfinished row's next token (finished rows idle on padding until they leave the batch)."""
        logits = logits.float().cpu()
        nxt = [self.pad_id if r.done else self._take(r, logits[j], stop) for j, r in enumerate(rows)]
        return torch.tensor(nxt, dtype=torch.long, device=self.precision.device)

    def _take(self, r: _Row, logits: torch.Tensor, stop: tuple[str, ...]) -> int:
        """The row's next token from its logits, added to its answer; the row is done at a stop token, a stop
        string or the closed code block it waits for."""
        tok = _sample(logits, r.request.decoding, r.generator)
        r.steps += 1
        if tok in self.stop_ids:
            r.done = True
            return tok
        r.out.append(tok)
        if r.lookup is not None:
            r.lookup.extend((tok,))
        if stop and _cut_at_stop(self.tokenizer.decode(r.out[-64:]), stop)[1]:
            r.done = True
        elif self._block_closed(r):
            r.done = True
        return tok

    def _block_closed(self, r: _Row) -> bool:
        """Whether the row's answer has closed the code block its decoding waits for."""
        name = r.request.decoding.end_after_block_defining
        return bool(name) and closed_block_defines(self.tokenizer.decode(r.out, skip_special_tokens=True), name)

    def _retire(self, batch: _Batch, max_new: int, stop: tuple[str, ...],
                finish: Callable[[_Row, tuple[str, ...]], None]) -> _Batch | None:
        """Hand over the answers that ended and drop their rows from the batch (and its cache)."""
        for r in batch.rows:
            if not r.done and r.steps >= max_new:
                r.done = True
            if r.done and not r.handed:
                finish(r, stop)
                r.handed = True
        keep = [j for j, r in enumerate(batch.rows) if not r.done]
        if not keep:
            return None
        if len(keep) < len(batch.rows) and hasattr(batch.past, "batch_select_indices"):
            index = torch.tensor(keep, device=self.precision.device)
            batch.past.batch_select_indices(index)
            batch = _Batch([batch.rows[j] for j in keep], batch.step, batch.past, batch.mask[index],
                           batch.pos[index], batch.nxt[index])
        return batch

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def continuation_logprobs(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens after ``context`` (one forward when
        every continuation is a single token, as MMLU's " A".." D" are)."""
        return next(self.continuation_logprobs_each([(context, continuations)]))

    @torch.no_grad()
    def continuation_logprobs_each(self, items: Iterable[tuple[str, Sequence[str]]]) -> Iterator[list[float]]:
        """``continuation_logprobs`` of each (context, continuations) in turn, as each is computed. Where single
        tokens follow and a context shares a long token prefix with the next one (the few-shot block of
        consecutive MMLU questions of one subject), the prefix runs once and serves every context that starts
        with it; only the rest of each runs."""
        prefix: _Prefix | None = None
        encoded = (self._encode_continuations(context, continuations) for context, continuations in items)
        with self._inference():
            current = next(encoded, None)
            while current is not None:
                ctx, conts = current
                current = next(encoded, None)
                if any(len(c) > 1 for c in conts):
                    yield [self._sequence_logprob(ctx, c) for c in conts]
                    continue
                prefix = self._scoring_prefix(prefix, ctx, current[0] if current is not None else [])
                logp = self._last_logprobs(ctx, prefix)
                yield [float(logp[c[0]]) for c in conts]

    def _sequence_logprob(self, ctx: list[int], continuation: list[int]) -> float:
        """Sum of the continuation's token log-probabilities after ``ctx``, from one forward over both."""
        logp = self._logprobs(ctx + continuation[:-1])
        return float(sum(logp[len(ctx) - 1 + k, t] for k, t in enumerate(continuation)))

    def _encode_continuations(self, context: str, continuations: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """The context's tokens and each continuation's, tokenised jointly as the text would be read (separately
        where BPE merges across the boundary)."""
        ctx = self.encode(context)
        conts = []
        for c in continuations:
            joint = self.encode(context + c)
            conts.append(joint[len(ctx):] if joint[: len(ctx)] == ctx else self.encode(c))
        if any(not c for c in conts):
            raise ValueError(f"a continuation of {continuations} encodes to no tokens")
        return ctx, conts

    def _scoring_prefix(self, prefix: _Prefix | None, ids: list[int], following: list[int]) -> _Prefix | None:
        """The prefix to score ``ids`` from: the one kept while ``ids`` starts with it, else the long common
        prefix with the context that follows, run now (None when too short, or where the cache cannot take it)."""
        if prefix is not None and len(ids) > len(prefix.ids) and ids[:len(prefix.ids)] == prefix.ids:
            return prefix
        return self._prefix_kv(ids[:_common_prefix([ids, following])])

    def _last_logprobs(self, ids: list[int], prefix: _Prefix | None) -> torch.Tensor:
        """Log-probabilities of the token after ``ids``; with a prefix, only the tokens after it run, on its
        keys and values."""
        if prefix is None:
            return self._logprobs(ids, last_only=True)[-1]
        n, device = len(prefix.ids), self.precision.device
        rest = torch.tensor([ids[n:]], device=device)
        with self.precision.autocast():
            out = self.model(input_ids=rest, attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
                             position_ids=torch.arange(n, len(ids), device=device)[None],
                             past_key_values=self._cache_from(prefix, 1, len(ids)), use_cache=True, logits_to_keep=1)
        return torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()

    def _logprobs(self, ids: list[int], last_only: bool = False) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.precision.device)
        with self.precision.autocast():
            logits = input_logits(self.model, x, last_only=last_only)[0]
        return torch.log_softmax(logits.float(), dim=-1).cpu()
