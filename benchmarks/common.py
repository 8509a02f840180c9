"""Shared helpers for the benchmarks: median timing and a record of the machine."""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from fedllm.models.calibration import describe_cpu


def machine() -> dict[str, Any]:
    return {"cpu": describe_cpu(), "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_result(name: str, result: dict[str, Any]) -> Path:
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=1))
    print(json.dumps(result, indent=1))
    print(f"written: {path}")
    return path
