"""Offsite-tuning's emulator (Xiao et al. 2023; FederatedScope-LLM's FedOT): the base model with a
share of its middle decoder layers dropped uniformly. Clients tune the adapter (LoRA on the first and
last k decoder layers) on the emulator; the server plugs the adapter they trained into the full model.

The emulator is a view of the one loaded model, not a copy: while it is active the decoder's layer
list holds only the kept layers, the very module objects of the full model, so the adapter trained on
the emulator *is* the adapter of the full model (no key is remapped, nothing is copied).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedllm.models.loading import ModelError

#: the names of the decoder's layer list in common architectures (Llama/Qwen/Mistral, GPT-2/Bloom, T5-style)
LAYER_LIST_NAMES = ("layers", "h", "blocks", "block", "layer")


class OffsiteError(ModelError):
    """The model cannot be made into offsite-tuning's emulator; the message names the setting."""


@dataclass(frozen=True)
class EmulatorPlan:
    """Which decoder layers the adapter holds and which ones the emulator runs (indices of the full model)."""

    num_layers: int
    drop_rate: float
    adapter: tuple[int, ...]  # the first and last k layers: LoRA lives here only
    kept: tuple[int, ...]  # every layer the emulator runs, in order (the adapter's included)

    @property
    def dropped(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.kept)


def plan_emulator(num_layers: int, adapter_layers: int, drop_rate: float) -> EmulatorPlan:
    """The emulator of a ``num_layers``-layer decoder: the first and last ``adapter_layers`` layers are
    the adapter and always kept; of the m middle layers n = round(m·(1 − drop_rate)) are kept, the
    i-th at middle offset ⌊i·(m−1)/(n−1)⌋ (FederatedScope-LLM's ``model_drop_layer``, in integers), so
    the first and last middle layers stay and the rest are spread evenly."""
    k = adapter_layers
    if k < 1:
        raise OffsiteError(f"offsite.adapter_layers={k}: the adapter needs at least one layer at each end")
    if not 0 <= drop_rate < 1:
        raise OffsiteError(f"offsite.drop_rate={drop_rate}: a share of the middle layers, 0 <= drop_rate < 1")
    if num_layers < 3:
        raise OffsiteError(f"offsite-tuning needs a model of at least 3 decoder layers (first, middle, last); this "
                           f"one has {num_layers}")
    if 2 * k >= num_layers:
        raise OffsiteError(f"offsite.adapter_layers={k}: the model has {num_layers} decoder layers, so the first and "
                           f"last {k} leave no middle layer to drop; use offsite.adapter_layers <= "
                           f"{math.ceil(num_layers / 2) - 1}")
    m = num_layers - 2 * k
    n = round(m * (1 - drop_rate))
    middle = [k + (i * (m - 1) // (n - 1) if n > 1 else 0) for i in range(n)]
    adapter = tuple(range(k)) + tuple(range(num_layers - k, num_layers))
    return EmulatorPlan(num_layers, drop_rate, adapter, tuple(sorted(set(adapter) | set(middle))))


def _unwrapped(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def num_decoder_layers(model: Any) -> int:
    """The number of decoder layers the model's config declares (``num_hidden_layers``)."""
    cfg = _unwrapped(model).config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise OffsiteError(f"offsite-tuning: {type(_unwrapped(model)).__name__}'s config declares no num_hidden_layers")
    return n


def find_layer_list(model: Any) -> tuple[nn.Module, str, nn.ModuleList]:
    """(owner module, attribute name, the list) of the model's decoder layers: the module list as long
    as the config's layer count (named like one where several are)."""
    base, n = _unwrapped(model), num_decoder_layers(model)
    found = [(name, m) for name, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) > 1:
        found = [(name, m) for name, m in found if name.rsplit(".", 1)[-1] in LAYER_LIST_NAMES]
    if len(found) != 1:
        names = ", ".join(name for name, _ in found) or "none"
        raise OffsiteError(f"offsite-tuning: cannot tell which module list of {type(base).__name__} holds its {n} "
                           f"decoder layers (candidates: {names})")
    name, layers = found[0]
    owner_name, _, attr = name.rpartition(".")
    return base.get_submodule(owner_name), attr, layers


def lora_layers(model: Any, offsite: Any) -> list[int] | None:
    """The decoder layers LoRA goes on under ``offsite`` (a ``config.OffsiteConfig``): the first and last
    k when offsite-tuning is on, None (every layer) when it is off."""
    if not offsite.enabled:
        return None
    return list(plan_emulator(num_decoder_layers(model), offsite.adapter_layers, offsite.drop_rate).adapter)


def _weights(model: Any, skip: set[int]) -> tuple[int, int]:
    """(parameters, bytes) of the model's weights as its modules hold them now, tied ones once."""
    params = [p for p in _unwrapped(model).parameters() if id(p) not in skip]
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


class Emulator:
    """Makes the loaded model run as the emulator while ``with emulator():`` is active, and the full
    model again afterwards (bit for bit: the original layer list object is put back)."""

    def __init__(self, model: Any, adapter_layers: int, drop_rate: float) -> None:
        self.model = model
        self.owner, self.attr, self.full = find_layer_list(model)
        self.plan = plan_emulator(len(self.full), adapter_layers, drop_rate)
        self.kept = nn.ModuleList([self.full[i] for i in self.plan.kept])
        self.active = False

    @contextmanager
    def __call__(self) -> Iterator[Any]:
        """The model as the emulator (the same modules, the dropped layers left out of the decoder)."""
        if self.active:  # nested (e.g. a personal phase inside a round): already the emulator
            yield self.model
            return
        setattr(self.owner, self.attr, self.kept)
        self.active = True
        try:
            yield self.model
        finally:
            setattr(self.owner, self.attr, self.full)
            self.active = False

    def report(self, adapter: Iterable[nn.Parameter]) -> dict[str, Any]:
        """What the setup event and summary record: the plan, and the weights (adapter excluded) a client
        downloads once (the emulator) against the full model's, in parameters and bytes as held."""
        skip = {id(p) for p in adapter}
        full_n, full_b = _weights(self.model, skip)
        with self():
            emu_n, emu_b = _weights(self.model, skip)
        p = self.plan
        return {"layers": p.num_layers, "drop_rate": p.drop_rate, "adapter_layers": list(p.adapter),
                "kept_layers": list(p.kept), "dropped_layers": len(p.dropped),
                "emulator_parameters": emu_n, "emulator_bytes": emu_b, "full_parameters": full_n, "full_bytes": full_b}
