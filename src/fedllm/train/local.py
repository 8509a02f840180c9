"""LocalTrainer: K steps of local training of the adapter slot, with an algorithm's client hooks.

The only place that runs backward passes. A fresh local optimizer per client and round (AdamW by
default; SGD, with or without momentum, as SCAFFOLD was published); the learning rate is constant
within the round (the server sets it from the cosine over rounds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedllm.fl.base import ClientHooks
from fedllm.fl.state import State
from fedllm.models.adapters import AdapterSlot
from fedllm.models.precision import Precision
from fedllm.registry import Registry
from fedllm.train.objectives import Objective, to_device


@dataclass
class LocalResult:
    state: State  # the client's adapter after training (w_i)
    num_steps: int
    num_seen: int  # samples processed (with repetition)
    num_tokens: int  # input tokens processed (padding excluded)
    loss: float  # mean training loss over the round, weighted by loss units
    seconds: float
    num_units: int = 0  # loss units (labelled tokens for SFT, pairs for DPO)
    num_labelled: int = 0  # tokens where the LM head ran
    step_losses: list[float] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)  # the objective's statistics, means over the units


@dataclass
class StepInfo:
    step: int
    loss: float
    tokens: int
    seconds: float
    total: int = 0  # steps in this round
    stats: dict[str, float] = field(default_factory=dict)  # the objective's statistics, means over the step's units


LOCAL_OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("local optimizer")
"""``train.optimizer``: (params, lr, weight_decay, momentum) -> a fresh optimizer."""


@LOCAL_OPTIMIZERS.register("adamw")
def _adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@LOCAL_OPTIMIZERS.register("sgd")
def _sgd(params: list[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


@LOCAL_OPTIMIZERS.register("sgdm")
def _sgdm(params: list[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


class LocalTrainer:
    def __init__(self, slot: AdapterSlot, objective: Objective, precision: Precision, pad_id: int,
                 weight_decay: float = 0.0, max_grad_norm: float | None = 1.0, optimizer: str = "adamw",
                 momentum: float = 0.9) -> None:
        self.make_optimizer = LOCAL_OPTIMIZERS.lookup(optimizer)
        self.slot = slot
        self.objective = objective
        self.precision = precision
        self.pad_id = pad_id
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.optimizer = optimizer
        self.momentum = momentum

    def train(self, features: list[dict[str, Any]], steps: list[list[list[int]]], lr: float,
              hooks: ClientHooks | None = None, on_step: Callable[[StepInfo], None] | None = None) -> LocalResult:
        """Run ``len(steps)`` optimizer steps; ``steps[s]`` lists micro-batches of indices into ``features``."""
        hooks = hooks or ClientHooks()
        model = self.slot.model
        params = self.slot.params
        plist = list(params.values())
        model.train()
        opt = self.make_optimizer(plist, lr, self.weight_decay, self.momentum)
        t0 = time.perf_counter()
        obj = self.objective
        used = [i for micro in steps for mb in micro for i in mb]
        obj.begin_round(model, features, used, self.pad_id, self.precision,
                        max((len(mb) for micro in steps for mb in micro), default=1))
        total_loss, total_units, seen, tokens = 0.0, 0, 0, 0
        labelled = sum(obj.labelled(features[i]) for i in used)
        step_losses: list[float] = []
        totals: dict[str, float] = {}
        for s, micro_batches in enumerate(steps):
            ts = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            units = sum(obj.units(features[i]) for mb in micro_batches for i in mb)
            denom = max(units, 1)
            step_loss, step_tokens = 0.0, 0
            step_stats: dict[str, float] = {}
            for mb in micro_batches:
                batch = to_device(obj.collate([features[i] for i in mb], self.pad_id), self.precision.device)
                with self.precision.autocast():
                    loss_sum, _, stats = obj.loss_stats(model, batch)
                (loss_sum / denom).backward()
                step_loss += float(loss_sum.detach())
                step_tokens += obj.tokens(batch)
                seen += len(mb)
                for k, v in stats.items():
                    step_stats[k] = step_stats.get(k, 0.0) + v
            extra = hooks.loss_term(params)
            if extra is not None:
                extra.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(plist, self.max_grad_norm)
            hooks.before_step(params, lr)
            opt.step()
            with torch.no_grad():
                hooks.after_step(params, lr)
            total_loss += step_loss
            total_units += units
            tokens += step_tokens
            step_losses.append(step_loss / denom)
            for k, v in step_stats.items():
                totals[k] = totals.get(k, 0.0) + v
            if on_step is not None:
                on_step(StepInfo(s, step_losses[-1], step_tokens, time.perf_counter() - ts, len(steps),
                                 {k: v / denom for k, v in step_stats.items()}))
        opt.zero_grad(set_to_none=True)
        return LocalResult(state=self.slot.read(), num_steps=len(steps), num_seen=seen, num_tokens=tokens,
                           loss=total_loss / max(total_units, 1), seconds=time.perf_counter() - t0,
                           num_units=total_units, num_labelled=labelled, step_losses=step_losses,
                           stats={k: v / max(total_units, 1) for k, v in totals.items()})
