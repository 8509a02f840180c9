"""Client participation schedules: which clients train in a round, as a pure function of the seed
and the round (no sampler state to checkpoint, no global RNG)."""

from __future__ import annotations

import numpy as np

from fedllm.seeding import derive_seed


def sample_uniform(client_ids: list[str], k: int, seed: int, round_idx: int) -> list[str]:
    """k clients uniformly without replacement, in sampled order; all clients when k >= N."""
    if k <= 0:
        raise ValueError(f"clients_per_round must be positive, got {k}")
    n = len(client_ids)
    if k >= n:
        return list(client_ids)
    rng = np.random.default_rng(derive_seed(seed, "clients", round_idx))
    return [client_ids[i] for i in rng.choice(n, size=k, replace=False)]
