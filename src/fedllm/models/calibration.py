"""``model.precision: auto`` on a CPU decides by measurement, not by CPU flags: bf16 autocast was 2.5×
faster than fp32 on one machine (AMX), 1.9× slower on another (avx512_bf16 Xeon) and 1.43× faster on a
third (Zen 5). A short calibration times the forward and backward matmuls of the model's own shapes in
each precision and keeps the faster; the result is cached per CPU, thread count, torch version and
shapes, so every process of a machine (simulation, Flower nodes, evaluation) makes the same choice.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: below this hidden size autocast's casts cost more than bf16 matmuls save (and tests stay in fp32)
MIN_HIDDEN = 256
#: bf16 must be this much faster to be chosen: a tie keeps fp32's exact numerics
MARGIN = 1.05
#: tokens per timed matmul (a batch of two 128-token samples)
TOKENS = 256
CACHE_FILE = "precision.json"


@dataclass(frozen=True)
class Calibration:
    """The choice and why: the timings (median seconds of one forward+backward of the shapes), or a rule."""

    choice: str
    reason: str
    key: str
    seconds: dict[str, float] | None = None
    cached: bool = False

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where unavailable, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def describe_cpu() -> str:
    """A short CPU name for benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                f = cpu_flags()
                feats = [x for x in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if x in f]
                return f"{name} ({', '.join(feats) or 'no avx2'}; {torch.get_num_threads()} threads)"
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def shapes_of(model: Any) -> tuple[int, int]:
    """(hidden size, feed-forward size) of a causal LM's config (through peft)."""
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    return hidden, int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)


def machine_key(hidden: int, inter: int) -> str:
    """What a calibration holds for: this CPU, its thread count, this torch, these shapes."""
    return f"{describe_cpu()}|torch {torch.__version__}|d={hidden},f={inter}"


def time_block(precision: str, hidden: int, inter: int, reps: int = 3) -> float:
    """Median seconds of a decoder layer's frozen-weight matmuls, forward and backward to the input
    (what LoRA training computes), under ``precision``'s autocast."""
    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(a, b, generator=gen) / b ** 0.5 for a, b in ((hidden, hidden), (inter, hidden), (hidden, inter))]
    x = torch.randn(TOKENS, hidden, generator=gen)
    times = []
    for rep in range(reps + 1):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = xi @ w[0].T
            h = torch.nn.functional.silu(h @ w[1].T) @ w[2].T
        h.float().square().mean().backward()
        if rep:  # the first is warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calibrate(model: Any, cache_dir: Path | None, timer: Callable[[str, int, int], float] | None = None) -> Calibration:
    """fp32 or bf16 for training ``model`` on this CPU, measured once and cached in ``cache_dir``."""
    hidden, inter = shapes_of(model)
    key = machine_key(hidden, inter)
    if hidden < MIN_HIDDEN:
        return Calibration("fp32", f"hidden size {hidden} < {MIN_HIDDEN}: too small for bf16 to pay", key)
    path = cache_dir / CACHE_FILE if cache_dir is not None else None
    cache = _read(path)
    if key in cache:
        return Calibration(**{**cache[key], "cached": True})
    timer = timer or time_block
    runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(2):  # interleaved, so drift on a shared machine hits both alike; the best of each counts
        for p in runs:
            runs[p].append(timer(p, hidden, inter))
    seconds = {p: min(t) for p, t in runs.items()}
    ratio = seconds["fp32"] / seconds["bf16"]
    choice = "bf16" if ratio > MARGIN else "fp32"
    reason = (f"bf16 autocast {ratio:.2f}x {'faster' if ratio >= 1 else 'as fast'} than fp32 at this model's "
              f"shapes (bf16 needs > {MARGIN}x)")
    out = Calibration(choice, reason, key, {p: round(s, 6) for p, s in seconds.items()})
    if path is not None:
        _write(path, {**cache, key: {k: v for k, v in out.record().items() if k != "cached"}})
    return out


def _read(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache is measured again
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    from fedllm.jsonl import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
    except OSError:
        pass  # a read-only cache only costs the next process a new measurement
