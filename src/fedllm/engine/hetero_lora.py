"""Heterogeneous LoRA ranks in the engine (``lora.hetero``): each client's rank from the config, the
model a client trains and the server evaluates under FLoRA (the base plus the merged ΔW, a client's
own scaling α/r_i). FLoRA's final adapter is ``models.merged_lora.save_merged_adapter``'s."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fedllm.fl.hetero_lora import MERGED, RANK_KEY, RankPlan, assign_ranks, materialize
from fedllm.fl.server import Algorithm
from fedllm.fl.state import State
from fedllm.models.merged_lora import lora_scaling, merged_base
from fedllm.runs import RunError


def rank_plan(cfg: Any, client_ids: list[str]) -> RankPlan | None:
    """The run's rank plan (``cfg`` a ``RunConfig``): None without ``lora.hetero``."""
    mode = cfg.lora.hetero
    if mode is None:
        return None
    try:
        ranks = assign_ranks(cfg.lora.client_ranks, client_ids, cfg.lora.r)
    except ValueError as e:
        raise RunError(str(e)) from None
    return RankPlan(mode, cfg.lora.r, cfg.lora.alpha, ranks)


@contextmanager
def client_model(model: Any, method: Mapping[str, Any], payload: Mapping[str, State]) -> Iterator[None]:
    """The model a client trains this round, from its instruction: FLoRA's merged base and the
    client's own LoRA scaling (nothing changes for other clients)."""
    merged = payload.get(MERGED)
    spec = method.get(RANK_KEY) or {}
    with merged_base(model, materialize(merged) if merged else None), lora_scaling(model, spec.get("scale")):
        yield


def server_model(model: Any, algorithm: Algorithm) -> Any:
    """The global model the server evaluates: under FLoRA the base plus the merged ΔW."""
    merged = algorithm.merge.merged if algorithm.merge is not None else None
    return merged_base(model, materialize(merged) if merged else None)

