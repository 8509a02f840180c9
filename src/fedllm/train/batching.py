"""Which samples a client trains on in a round: seeded by (run seed, round, client), so batches
change from round to round, and grouped by length so compute goes to tokens rather than padding."""

from __future__ import annotations

import math

import numpy as np


def dynamic_local_steps(n_i: int, epochs: float, rounds: int, clients_per_round: int, num_clients: int,
                        batch_size: int, grad_accum: int) -> int:
    """FedLLM-Bench's rule K_i = ceil((n_i·E / (T·S/N)) / (B·GA)): E epochs over the client's expected
    T·S/N participations."""
    participations = rounds * clients_per_round / num_clients
    return max(1, math.ceil((n_i * epochs / participations) / (batch_size * grad_accum)))


def draw_round_batches(lengths: list[int], num_steps: int, batch_size: int, grad_accum: int, seed: int,
                       group_by_length: bool = True, window_steps: int = 8) -> list[list[list[int]]]:
    """Steps -> micro-batches -> sample indices for one client round.

    Samples are drawn as consecutive random permutations (epochs) until K·B·GA are taken. With
    ``group_by_length``, each window of ``window_steps`` steps is sorted by length into micro-batches
    whose order is then shuffled: the round's multiset of samples is unchanged, padding is not.
    """
    n = len(lengths)
    if n == 0:
        raise ValueError("client has no training samples")
    rng = np.random.default_rng(seed)
    need = num_steps * batch_size * grad_accum
    order: list[int] = []
    while len(order) < need:
        order.extend(rng.permutation(n).tolist())
    order = order[:need]
    per_step = batch_size * grad_accum
    steps: list[list[list[int]]] = []
    for w0 in range(0, num_steps, window_steps):
        w_steps = min(window_steps, num_steps - w0)
        chunk = order[w0 * per_step:(w0 + w_steps) * per_step]
        if group_by_length:
            chunk = sorted(chunk, key=lambda i: (lengths[i], i))
        micro = [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
        if group_by_length:
            micro = [micro[j] for j in rng.permutation(len(micro))]
        steps.extend(micro[s * grad_accum:(s + 1) * grad_accum] for s in range(w_steps))
    return steps
