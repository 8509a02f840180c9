"""LoRA adapters through peft, read and written as plain ``dict[str, Tensor]`` (fp32, CPU).

One adapter slot lives on the shared base model; a simulated client is only the state loaded into it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedllm.fl.state import State, is_lora_a


def attach_lora(model: Any, cfg: Any) -> Any:
    """Wrap ``model`` with a LoRA adapter (``cfg`` is a ``config.LoraConfig``); base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = [t for t in cfg.target_modules if t not in names]
    if unknown:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"lora.target_modules {unknown} not found in the model; its linear layers are {linear}")
    peft_cfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


class AdapterSlot:
    """The trainable parameters of a peft model under the key names peft saves them with.

    Keys come from ``get_peft_model_state_dict`` and are matched to live parameters by storage,
    so no parameter name is edited by string replacement. With ``freeze_a`` (FFA-LoRA, Sun et al.
    2024) every LoRA A stays at its seeded initialisation, shared by all clients: only B is trained,
    read, sent and aggregated, which halves the message and keeps the product BA linear in what DP
    noises.
    """

    def __init__(self, peft_model: Any, freeze_a: bool = False) -> None:
        from peft import get_peft_model_state_dict

        self.model = peft_model
        by_ptr = {p.data_ptr(): p for p in peft_model.parameters() if p.requires_grad}
        every: dict[str, nn.Parameter] = {}
        for key, tensor in get_peft_model_state_dict(peft_model).items():
            param = by_ptr.get(tensor.data_ptr())
            if param is None:
                raise RuntimeError(f"adapter key {key} does not map to a trainable parameter")
            every[key] = param
        if len(every) != len(by_ptr):
            raise RuntimeError(f"{len(by_ptr) - len(every)} trainable parameters are not part of the adapter state")
        self.every = every
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
        """peft's default LoRA init (A ~ kaiming-uniform(a=√5), B = 0) from an explicit seed, so runs
        sharing one model start from the same adapter for the same seed. Frozen parts (FFA-LoRA's A)
        are set in the model; the trainable part is returned."""
        gen = torch.Generator().manual_seed(seed)
        out: State = {}
        for k, p in self.every.items():
            t = torch.zeros(p.shape, dtype=torch.float32)
            if is_lora_a(k):
                nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen)
            if k in self.frozen:
                p.copy_(t)
            else:
                out[k] = t
        return out

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
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    previous = slot.read()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        slot.load(state)
        slot.model.save_pretrained(tmp)
        _make_config_deterministic(tmp / "adapter_config.json")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; an adapter directory is not
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        slot.load(previous)
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _make_config_deterministic(path: Path) -> None:
    """peft keeps target_modules as a set, so its JSON order changes with the process's hash seed:
    write it sorted, so identical runs write identical files."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
