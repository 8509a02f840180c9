"""PEFT adapters through peft, read and written as plain ``dict[str, Tensor]`` (fp32, CPU).

One adapter slot lives on the shared base model; a simulated client is only the state loaded into it.
Which method wraps the model (LoRA, DoRA, IA³, prompt, P-, prefix tuning) is ``peft.method``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedllm.fl.state import State, is_lora_a
from fedllm.jsonl import atomic_dir
from fedllm.models.peft_methods import PEFT_METHODS, PeftMethod

#: the trainable form of an adapter whose peft file holds a computed form (P-tuning's MLP output)
TRAINABLE_FILE = "fedllm_trainable.safetensors"


def peft_method(cfg: Any) -> PeftMethod:
    """The run's PEFT method (``cfg`` is a ``config.RunConfig``)."""
    return PEFT_METHODS.lookup(cfg.peft.method)(cfg)


def attach_adapter(model: Any, cfg: Any, layers: list[int] | None = None) -> Any:
    """Wrap ``model`` with the run's PEFT adapter (``layers``: only these decoder layers); base weights are frozen."""
    from peft import get_peft_model

    method = peft_method(cfg)
    if (why := method.problem(model, layers)) is not None:
        raise ValueError(why)
    return get_peft_model(model, method.peft_config(model, layers))


def _without(name: str, part: str) -> str:
    """A parameter name without one dotted component (peft's adapter name in prompt encoders)."""
    return ".".join(x for x in name.split(".") if x != part)


class AdapterSlot:
    """The trainable parameters of a peft model under the key names peft saves them with.

    Keys come from ``get_peft_model_state_dict`` and are matched to live parameters by storage, so no
    parameter name is edited by string replacement; prompt-learning methods, whose saved form is
    computed rather than stored, are keyed by their parameter names (without peft's adapter name).
    With ``freeze_a`` (FFA-LoRA, Sun et al. 2024) every LoRA A stays at its seeded initialisation,
    shared by all clients: only B is trained, read, sent and aggregated, which halves the message and
    keeps the product BA linear in what DP noises.
    """

    def __init__(self, peft_model: Any, freeze_a: bool = False, method: PeftMethod | None = None) -> None:
        from peft import get_peft_model_state_dict

        self.model = peft_model
        self.method = method
        named = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        by_ptr = {p.data_ptr(): p for p in named.values()}
        every: dict[str, nn.Parameter] = {}
        if getattr(peft_model.active_peft_config, "is_prompt_learning", False):
            every = {_without(n, peft_model.active_adapter): p for n, p in named.items()}
        else:
            for key, tensor in get_peft_model_state_dict(peft_model).items():
                param = by_ptr.get(tensor.data_ptr())
                if param is None:
                    raise RuntimeError(f"adapter key {key} does not map to a trainable parameter")
                every[key] = param
        if len(every) != len(by_ptr):
            raise RuntimeError(f"{len(by_ptr) - len(every)} trainable parameters are not part of the adapter state")
        self.every = every
        self.attached = {k: p.detach().to("cpu", torch.float32, copy=True) for k, p in every.items()}
        self.frozen = {k: p for k, p in every.items() if freeze_a and is_lora_a(k)}
        for p in self.frozen.values():
            p.requires_grad_(False)
        self.params: dict[str, nn.Parameter] = {k: p for k, p in every.items() if k not in self.frozen}

    def keys(self) -> list[str]:
        return list(self.params)

    def read(self) -> State:
        """A detached fp32 CPU copy of the current (trainable) adapter."""
        return {k: p.detach().to("cpu", torch.float32, copy=True) for k, p in self.params.items()}

    @torch.no_grad()
    def load(self, state: State) -> None:
        """Copy ``state`` into the live parameters (keys must match exactly)."""
        if state.keys() != self.params.keys():
            missing = sorted(self.params.keys() - state.keys())
            unexpected = sorted(state.keys() - self.params.keys())
            raise KeyError(f"adapter state mismatch: missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
        for k, p in self.params.items():
            v = state[k]
            if v.shape != p.shape:
                raise ValueError(f"adapter state {k}: shape {tuple(v.shape)} != parameter {tuple(p.shape)}")
            p.copy_(v)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @torch.no_grad()
    def initial_state(self, seed: int) -> State:
        """The method's initialisation drawn from an explicit seed (LoRA: A ~ kaiming-uniform(a=√5),
        B = 0, as peft), so runs sharing one model start from the same adapter for the same seed. Frozen
        parts (FFA-LoRA's A) are set in the model; the trainable part is returned."""
        gen = torch.Generator().manual_seed(seed)
        method = self.method or PEFT_METHODS.lookup("lora")(None)
        out: State = {}
        for k, p in self.every.items():
            t = method.initial(k, self.attached[k], self.model, gen)
            t = self.attached[k].clone() if t is None else t
            if k in self.frozen:
                p.copy_(t)
            else:
                out[k] = t
        return out

    def from_saved(self, saved: State) -> State:
        """A whole adapter state from a saved file: this slot's keys, or peft's ``prompt_embeddings``
        for prompt and prefix tuning (whose trainable form is that one embedding)."""
        if saved.keys() == self.every.keys() or saved.keys() == self.params.keys():
            return saved
        if set(saved) == {"prompt_embeddings"} and len(self.every) == 1:
            return {next(iter(self.every)): saved["prompt_embeddings"]}
        if set(saved) == {"prompt_embeddings"}:
            raise KeyError(f"the file holds only peft's computed prompt embeddings; a {type(self.method).__name__} "
                           f"adapter is evaluated from its trainable form ({TRAINABLE_FILE})")
        return saved

    def full(self, state: State) -> State:
        """The whole adapter (frozen parts included), as peft saves it, for ``state``'s trainable part."""
        return {k: (p.detach().to("cpu", torch.float32, copy=True) if k in self.frozen else state[k])
                for k, p in self.every.items()}

    def trainable(self, full: State) -> State:
        """The trainable part of a whole adapter (e.g. a checkpoint's)."""
        missing = sorted(self.params.keys() - full.keys())
        if missing:
            raise KeyError(f"adapter state lacks {missing[:3]} ({len(missing)})")
        return {k: full[k] for k in self.params}


def save_adapter(slot: AdapterSlot, state: State, out_dir: Path) -> Path:
    """Write ``state`` as a peft adapter directory (``PeftModel.from_pretrained`` loads it), atomically."""
    previous = slot.read()
    try:
        with atomic_dir(out_dir) as tmp:
            slot.load(state)
            slot.model.save_pretrained(tmp)
            _make_config_deterministic(tmp / "adapter_config.json")
            if slot.method is not None and slot.method.reparametrized:
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in slot.full(state).items()}, str(tmp / TRAINABLE_FILE))
    finally:
        slot.load(previous)
    return Path(out_dir)


def _make_config_deterministic(path: Path) -> None:
    """peft keeps target_modules as a set, so its JSON order changes with the process's hash seed:
    write it sorted, so identical runs write identical files."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


class AdapterFileError(ValueError):
    """An adapter file is missing or damaged; the message names it."""


def load_adapter_state(adapter_dir: Path) -> State:
    """Read a saved peft adapter's weights as an fp32 state dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_model.safetensors (not a peft adapter directory?)")
    try:
        return {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as e:
        raise AdapterFileError(f"{path} is damaged and cannot be read ({e}); re-create it from the run's "
                               f"checkpoints or re-train") from None
