"""Cost of training: what a client's round costs in compute and memory (its bytes are the lengths of
its real messages, counted by the engine).

FLOPs are an analytic estimate (Kaplan et al. 2020 style, attention's quadratic term ignored):
with frozen base weights, a token costs 2·N forward and 2·N backward (gradients flow through the
activations but no weight gradients are formed), where N counts the transformer-body weights; the
LoRA weights cost the full 6 per parameter; the LM head (d·V weights) runs only on labelled tokens
(see ``train.objectives``), so it is counted 6·d·V per labelled token.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelShape:
    body_params: int  # frozen weights of the transformer blocks (embeddings and LM head excluded)
    adapter_params: int
    head_params: int  # hidden size × vocabulary size

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        emb = base.get_input_embeddings()
        head = base.get_output_embeddings()
        skip = {id(emb.weight)} | ({id(head.weight)} if head is not None else set())
        body = adapter = 0
        for p in base.parameters():
            if id(p) in skip:
                continue
            if p.requires_grad:
                adapter += p.numel()
            else:
                body += p.numel()
        head_n = head.weight.numel() if head is not None else emb.weight.numel()
        return cls(body_params=body, adapter_params=adapter, head_params=head_n)


def train_flops(shape: ModelShape, tokens: int, labelled_tokens: int) -> float:
    """Estimated FLOPs of training on ``tokens`` input tokens of which ``labelled_tokens`` carry loss."""
    return float(4 * shape.body_params * tokens + 6 * shape.adapter_params * tokens + 6 * shape.head_params * labelled_tokens)


def peak_memory_mb(device: torch.device | str = "cpu") -> dict[str, float]:
    """Peak process RSS, and peak CUDA memory allocated when on a GPU."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out

