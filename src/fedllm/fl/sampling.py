"""Client participation schedules: which clients train in a round, as a pure function of the seed
and the round (no sampler state to checkpoint, no global RNG). ``uniform`` draws a fixed-size
sample without replacement; ``poisson`` takes each client independently with probability q = S/N
(the sampling DP-FedAvg's add/remove-one accounting assumes), so a round's size varies around S."""

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


def sample_poisson(client_ids: list[str], k: int, seed: int, round_idx: int) -> list[str]:
    """Each client with probability q = k/N, independently; in client order (possibly none)."""
    if k <= 0:
        raise ValueError(f"clients_per_round must be positive, got {k}")
    n = len(client_ids)
    q = min(k / n, 1.0)
    rng = np.random.default_rng(derive_seed(seed, "clients-poisson", round_idx))
    return [cid for cid, u in zip(client_ids, rng.random(n)) if u < q]


SAMPLERS = {"uniform": sample_uniform, "poisson": sample_poisson}

