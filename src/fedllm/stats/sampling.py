"""Seeded per-client sample orders: which samples a capped statistic uses."""

from __future__ import annotations

import numpy as np

from fedllm.hashing import stable_hash


def seeded_order(n: int, seed: int, client_id: str) -> list[int]:
    """A permutation of range(n) fixed by (seed, client id): the first k of it are the k samples a capped
    statistic uses, so a larger cap extends the choice (and reuses cached results) instead of redrawing it."""
    key = int(stable_hash("order", seed, client_id, size=8), 16)
    return np.random.default_rng(key).permutation(n).tolist()
