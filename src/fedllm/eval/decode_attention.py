"""Attention for decoding steps of a few positions per row (drafts being checked) on grouped-query models.

transformers' SDPA path copies every cached key and value ``num_key_value_groups`` times (``repeat_kv``)
when a step carries more than one query and a mask; over a 300-position cache at 32 rows that copy and
the nine-head kernel cost 3-4x a one-query step, which ate what drafts save. Here the query heads that
share a key/value head become rows of one query block instead ([batch, kv heads, groups x queries, dim]),
so the cache is read as it is. The kernel computes each query row alone, so outputs are bit-identical
(tests/test_eval_core.py); one-query steps and prompts keep transformers' own path.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "fedllm_grouped_sdpa"
MAX_QUERIES = 16  # positions per row up to which a step counts as decoding (a prompt runs as before)


def grouped_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa_attention_forward``, with a few-query step on grouped heads run without copying
    the cache; the same output layout ([batch, queries, heads, dim])."""
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, queries, dim = query.shape
    if (groups == 1 or not 1 < queries <= MAX_QUERIES or attention_mask is None or attention_mask.dtype != torch.bool
            or dropout or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kv_heads, keys = key.shape[1], key.shape[2]
    # query heads h = kv * groups + g; their rows (g, t) line up with the mask's rows t, repeated per g
    q = query.reshape(batch, kv_heads, groups * queries, dim)
    mask = attention_mask.expand(batch, 1, queries, keys)
    mask = mask[:, :, None].expand(batch, 1, groups, queries, keys).reshape(batch, 1, groups * queries, keys)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, queries, dim).transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS.register(NAME, grouped_sdpa)  # the registry line: a name configs can select
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # with SDPA's boolean masks
