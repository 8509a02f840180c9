"""A KV cache for decoding that appends in place.

transformers' ``DynamicLayer`` appends a token with ``torch.cat``, which copies the whole cache at
every step: O(L²) memory traffic per answer, a fifth of decoding time at 32 new tokens and most of it
after an 8-shot prompt. ``GrowingLayer`` keeps buffers with spare capacity (doubling when full) and
hands attention views of the filled part, so attention sees the same keys and values and the
answers do not change.

Under bf16 autocast the buffers can hold bf16: RoPE leaves the keys in fp32, and autocast's attention
casts the whole cache to bf16 again at every step (a third of decoding time on HumanEval); storing
the cast once hands attention the same tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """One decoder layer's keys and values in buffers of spare capacity, shape [batch, heads, capacity, dim]."""

    def __init__(self, capacity: int = 0, dtype: torch.dtype | None = None) -> None:
        self._capacity = capacity
        self.store_dtype = dtype  # what the buffers hold (None: the states' own dtype)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0
        super().__init__()

    # ``keys``/``values`` are what transformers reads and assigns (select rows, reorder, offload)
    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, :self._n]

    @keys.setter
    def keys(self, t: torch.Tensor | None) -> None:
        self._k, self._n = t, (0 if t is None or t.dim() < 3 else t.shape[-2])

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, :self._n]

    @values.setter
    def values(self, t: torch.Tensor | None) -> None:
        self._v = t

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self._k is None or self._k.dim() < 3 or self._n + new > self._k.shape[-2]:
            self._grow(key_states, value_states, self._n + new)
        self._k[:, :, self._n:self._n + new] = key_states
        self._v[:, :, self._n:self._n + new] = value_states  # type: ignore[index]
        self._n += new
        return self.keys, self.values  # type: ignore[return-value]

    def _grow(self, k: torch.Tensor, v: torch.Tensor, need: int) -> None:
        """New buffers of at least ``need`` positions (and twice the old capacity), the filled part copied."""
        old = 0 if self._k is None or self._k.dim() < 3 else self._k.shape[-2]
        cap = max(need, 2 * old, self._capacity)
        b, h, _, d = k.shape
        nk = k.new_empty((b, h, cap, d), dtype=self.store_dtype or k.dtype)
        nv = v.new_empty((b, v.shape[1], cap, v.shape[-1]), dtype=self.store_dtype or v.dtype)
        if self._n:
            nk[:, :, :self._n] = self.keys
            nv[:, :, :self._n] = self.values
        self._k, self._v = nk, nv

    def get_seq_length(self) -> int:
        return self._n if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only these rows (answers that finished leave the batch); capacity is kept. Rows kept in
        order move up in place over those that left, filled positions only (indexing would copy every row's
        whole capacity into new buffers at each answer's end); any other selection is indexed."""
        if not self._n:
            return
        keep = indices.tolist()
        if any(b <= a for a, b in zip(keep, keep[1:])) or (keep and keep[0] < 0):
            self._k, self._v = self._k[indices], self._v[indices]  # type: ignore[index]
            return
        n = self._n
        for i, j in enumerate(keep):  # j >= i: row j is read before anything overwrites it
            if i != j:
                self._k[i, :, :n].copy_(self._k[j, :, :n])  # type: ignore[index]
                self._v[i, :, :n].copy_(self._v[j, :, :n])  # type: ignore[index]
        self._k, self._v = self._k[:len(keep)], self._v[:len(keep)]  # type: ignore[index]

    @classmethod
    def stacked(cls, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], width: int, capacity: int,
                dtype: torch.dtype | None = None) -> GrowingLayer:
        """One layer holding ``parts`` one batch under the other: keys and values ([rows, heads, positions, dim])
        and, where gaps are to be dropped, the positions each row keeps in order ([rows, kept]; None: all).
        Each part is right-aligned at ``width`` positions behind zeros (left padding, masked), with room for
        ``capacity`` positions, each part written into place in one pass (a gapped row through a row-sized copy)."""
        k0, v0, _ = parts[0]
        rows, cap = sum(k.shape[0] for k, _, _ in parts), max(capacity, width)
        layer = cls(capacity, dtype)
        layer.lazy_initialization(k0, v0)
        layer._k = k0.new_empty((rows, k0.shape[1], cap, k0.shape[3]), dtype=dtype or k0.dtype)
        layer._v = v0.new_empty((rows, v0.shape[1], cap, v0.shape[3]), dtype=dtype or v0.dtype)
        r = 0
        for k, v, keep in parts:
            m = k.shape[0]
            pad = width - (k.shape[2] if keep is None else keep.shape[1])
            for buf, t in ((layer._k, k), (layer._v, v)):
                buf[r:r + m, :, :pad].zero_()  # attention gives these zero weight; zeros keep 0·value finite
                dst = buf[r:r + m, :, pad:width]
                if keep is None:
                    dst.copy_(t)
                else:  # a row at a time: index_select moves whole head-dim vectors, several times faster than a gather
                    for i in range(m):
                        dst[i].copy_(t[i].index_select(1, keep[i]))  # copy_ stores another dtype as this layer does
            r += m
        layer._n = width
        return layer

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self._n = max(0, self._n + tokens_to_remove)


def growing_cache(config: Any, capacity: int, dtype: torch.dtype | None = None) -> Any:
    """A cache for one batch of answers: the model's own layer types, with full-attention layers growing in
    place (``capacity`` positions preallocated, in ``dtype``: the one attention casts to, or None);
    None where transformers cannot take one."""
    try:
        cache = DynamicCache(config=config)
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
    if not cache.layers:  # an older layout: layers appear lazily
        return None
    cache.layers = [GrowingLayer(capacity, dtype) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
