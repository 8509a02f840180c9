"""Run-time choice of device and training precision.

bf16 autocast trained SmolLM2-135M 2.5x faster than fp32 on a CPU with AMX, 1.9x slower on one with
avx512_bf16 but no AMX and 1.43x faster on a Zen 5, so on a CPU ``auto`` measures (``calibration``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device={device!r} but CUDA is not available; use cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device, model: Any = None,
                      cache_dir: Path | None = None) -> tuple[str, dict[str, Any]]:
    """('fp32' | 'bf16', why) for this hardware: as set; on CUDA bf16 where supported; on a CPU, ``auto``
    measures which is faster at ``model``'s shapes (``calibration.calibrate``, cached in ``cache_dir``)."""
    if precision in ("fp32", "bf16"):
        return precision, {"reason": "set by model.precision"}
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; expected auto, fp32 or bf16")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16" if ok else "fp32"), {"reason": f"CUDA {'with' if ok else 'without'} bf16 support"}
    from fedllm.models.calibration import calibrate

    found = calibrate(model, cache_dir)
    return found.choice, found.record()


@dataclass(frozen=True)
class Precision:
    """Weights stay fp32 (adapters and optimizer state too); compute runs under autocast for bf16."""

    name: str
    device: torch.device
    why: dict[str, Any] | None = field(default=None, compare=False)  # how ``auto`` chose (timings), for the record

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.name == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
