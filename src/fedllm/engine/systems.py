"""Simulated system heterogeneity (``systems:``): each client's device speed, bandwidths and latency,
its simulated time in a round, the straggler deadline and the run's simulated wall clock.

A client's profile is drawn once from (run seed, client id), so it is the same in every round, on
resume and in any process. Its time in a round is what the round really cost it, at its simulated
speeds: ``latency + bytes_down / down + flops / flops_per_s + bytes_up / up``, with the FLOPs the
client measured and the lengths of the real messages. The round lasts as long as its slowest
on-time client, or the deadline when clients were cut; late clients are not aggregated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedllm.config import Dist, SystemsConfig
from fedllm.engine.metrics import MetricsLog
from fedllm.engine.transport import Exchange
from fedllm.fl import ClientUpdate
from fedllm.seeding import derive_seed

__all__ = ["Profile", "RoundClock", "apply_deadline", "client_profile", "client_seconds", "exchange_seconds",
           "round_clock", "systems_summary"]

QUANTITIES = ("flops", "up", "down", "latency")

#: how each distribution draws one value from a seeded generator
DRAWS: dict[str, Callable[[Any, random.Random], float]] = {
    "fixed": lambda d, rng: d.value,
    "uniform": lambda d, rng: rng.uniform(d.low, d.high),
    "lognormal": lambda d, rng: d.median * math.exp(d.sigma * rng.gauss(0.0, 1.0)),
}


@dataclass(frozen=True)
class Profile:
    """One client's simulated device: FLOP/s, bytes/s up and down, seconds of latency per round."""

    flops: float
    up: float
    down: float
    latency: float
    tier: int | None = None  # index into systems.tiers, if tiers are configured


def draw(d: Dist, seed: int) -> float:
    """One value of a distribution, from its own seed."""
    return DRAWS[d.dist](d, random.Random(seed))


def pick_tier(shares: list[float], u: float) -> int:
    """The tier whose share interval [cumulative, cumulative + share) holds u ∈ [0, 1)."""
    total = 0.0
    for i, share in enumerate(shares):
        total += share
        if u < total:
            return i
    return len(shares) - 1  # shares summing to 1 - ε


def client_profile(cfg: SystemsConfig, seed: int, client_id: str) -> Profile:
    """The client's device, a pure function of (configuration, run seed, client id)."""
    tier = None
    specs = {q: getattr(cfg, q) for q in QUANTITIES}
    if cfg.tiers:
        tier = pick_tier([t.share for t in cfg.tiers], random.Random(derive_seed(seed, "systems-tier", client_id)).random())
        specs.update({q: d for q in QUANTITIES if (d := getattr(cfg.tiers[tier], q)) is not None})
    values = {q: draw(d, derive_seed(seed, "systems", q, client_id)) for q, d in specs.items()}
    return Profile(**values, tier=tier)


def client_seconds(p: Profile, flops: float, bytes_down: int, bytes_up: int) -> float:
    """A client's simulated time in a round: latency, the instruction down, the local training, the reply up."""
    return p.latency + bytes_down / p.down + flops / p.flops + bytes_up / p.up


def exchange_seconds(cfg: SystemsConfig, seed: int, ex: Exchange) -> float:
    """The simulated time of one client's round as the server saw it (its reply's measured FLOPs)."""
    assert ex.reply is not None
    return client_seconds(client_profile(cfg, seed, ex.client_id), float(ex.reply.metrics.get("flops", 0.0)),
                          ex.bytes_down, ex.bytes_up)


@dataclass(frozen=True)
class RoundClock:
    """A round under the deadline: who made it, who was late, and how long the round took."""

    on_time: dict[str, float]
    late: dict[str, float]
    seconds: float


def round_clock(times: dict[str, float], deadline: float | None, missing: bool = False) -> RoundClock:
    """Split the clients' times at the deadline; the round lasts as long as the slowest on-time client,
    or the whole deadline when someone was cut (late, or missing: the server waited for it)."""
    if deadline is None:
        return RoundClock(dict(times), {}, max(times.values(), default=0.0))
    on_time = {c: t for c, t in times.items() if t <= deadline}
    late = {c: t for c, t in times.items() if t > deadline}
    seconds = deadline if late or missing else max(on_time.values(), default=0.0)
    return RoundClock(on_time, late, seconds)


def apply_deadline(cfg: SystemsConfig, round_no: int, updates: list[ClientUpdate], times: dict[str, float],
                   missing: bool, metrics: MetricsLog, warn: Callable[[str], None],
                   timing: dict[str, float]) -> tuple[list[ClientUpdate], dict[str, Any]]:
    """Leave out the updates of late clients (a ``late`` event and a warning each) and advance the run's
    simulated clock (``timing["sim_clock"]``, checkpointed with the other timings); returns the on-time
    updates and the round event's fields."""
    clock = round_clock(times, cfg.deadline, missing)
    for cid, t in clock.late.items():
        metrics.write("late", round=round_no, client=cid, sim_seconds=t, deadline=cfg.deadline)
        warn(f"round {round_no}: client {cid} is late ({t:.3g} simulated s > systems.deadline={cfg.deadline:g} s); "
             f"its update is not aggregated")
    timing["sim_clock"] = timing.get("sim_clock", 0.0) + clock.seconds
    kept = [u for u in updates if u.client_id not in clock.late]
    return kept, {"sim_seconds": clock.seconds, "sim_clock": timing["sim_clock"], "late": list(clock.late)}


def systems_summary(cfg: SystemsConfig, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's simulated-systems figures for summary.json, from its metrics events (the clock itself
    is summary.json's ``sim_clock``, beside the other timings)."""
    times = [e["sim_seconds"] for e in events if e["event"] == "client" and "sim_seconds" in e]
    rounds = [e for e in events if e["event"] == "round" and "sim_seconds" in e]
    return {
        "deadline": cfg.deadline,
        "late_updates": sum(1 for e in events if e["event"] == "late"),
        "rounds_cut": sum(1 for e in rounds if e.get("late")),
        "client_seconds_mean": sum(times) / len(times) if times else None,
        "client_seconds_max": max(times, default=None),
        "round_seconds_mean": sum(e["sim_seconds"] for e in rounds) / len(rounds) if rounds else None,
    }
