"""Gaussian noise shaped like an adapter state, from an explicit seed (or the OS's entropy), so a
noised run is reproducible and resumable when it should be, and unpredictable when it must be."""

from __future__ import annotations

import secrets

import torch

from fedllm.fl.state import State


def gaussian_like(like: State, std: float, seed: int | None) -> State:
    """N(0, std²) per entry, one tensor per key of ``like`` (its shapes and dtypes), drawn in key order
    from a generator seeded with ``seed``; a fresh secret seed when ``seed`` is None."""
    gen = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=torch.float64).mul_(std).to(v.dtype) for k, v in like.items()}


def add_noise(state: State, std: float, seed: int | None) -> State:
    """``state`` + N(0, std²) per entry (a new state)."""
    noise = gaussian_like(state, std, seed)
    return {k: v + noise[k] for k, v in state.items()}


def noise_seed(secure: bool, run_seed: int, *purpose: object) -> int:
    """The seed noise derives from: from the run seed (reproducible; no privacy against whoever knows
    it) or, with ``secure``, drawn from the OS's entropy (kept in the server state to resume)."""
    from fedllm.seeding import derive_seed

    return secrets.randbits(63) if secure else derive_seed(run_seed, "dp-noise", *purpose)
