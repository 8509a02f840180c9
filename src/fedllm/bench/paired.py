"""Is one model's held-out loss really lower than another's? A paired comparison over the same samples.

Both models are scored on the same held-out samples, so the question is about the differences
dᵢ = loss_A(i) − loss_B(i), not two separate means. Samples of one client resemble each other, so the
samples are not independent draws: the interval that supports a conclusion treats the client as
the unit (a t-interval over per-client mean differences, and a sign-flip permutation test that flips
whole clients). The per-sample paired t-interval is shown beside it, as the narrower, optimistic one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

EXACT_CLIENTS = 16  # up to 2**16 sign patterns are enumerated; above, a seeded Monte Carlo draw


@dataclass(frozen=True)
class PairedComparison:
    """Mean of loss_A − loss_B (negative: A is better) with 95% intervals, by sample and by client."""

    mean_diff: float  # over samples
    sample_ci: tuple[float, float]  # paired t over samples (assumes independent samples)
    n_samples: int
    client_mean_diff: float  # mean of per-client mean differences (each client weighs the same)
    client_ci: tuple[float, float]  # t over clients
    n_clients: int
    p_value: float  # two-sided sign-flip permutation test over clients (H0: no difference)
    a_better: int  # samples where A's loss is lower
    level: float = 0.95

    @property
    def significant(self) -> bool:
        """Whether the client-level interval excludes 0."""
        lo, hi = self.client_ci
        return lo > 0 or hi < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def _t_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return (float("nan"), float("nan"))
    m, se = float(values.mean()), float(values.std(ddof=1) / math.sqrt(n))
    h = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    return (m - h, m + h)


def sign_flip_p(values: np.ndarray, draws: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of mean(values) = 0 under random signs: exact for up to EXACT_CLIENTS values."""
    n = len(values)
    if n == 0:
        return float("nan")
    observed = abs(values.mean())
    if n <= EXACT_CLIENTS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(draws, n))
        signs[0] = 1.0  # the observed pattern counts, so p > 0
    means = np.abs(signs @ values) / n
    return float(np.mean(means >= observed - 1e-15))


def paired_comparison(a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]],
                      level: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare per-sample losses of model A and model B: client id -> losses of the same samples in the
    same order (NaN where a sample has no loss unit; such samples and empty clients are left out)."""
    if set(a) != set(b):
        raise ValueError(f"the two models were scored on different clients: {sorted(set(a) ^ set(b))}")
    per_client, diffs = [], []
    for cid in a:
        if len(a[cid]) != len(b[cid]):
            raise ValueError(f"client {cid}: {len(a[cid])} vs {len(b[cid])} scored samples")
        d = np.asarray(a[cid], dtype=np.float64) - np.asarray(b[cid], dtype=np.float64)
        d = d[np.isfinite(d)]
        if len(d):
            diffs.append(d)
            per_client.append(float(d.mean()))
    if not diffs:
        raise ValueError("no sample was scored by both models")
    flat, clients = np.concatenate(diffs), np.asarray(per_client)
    return PairedComparison(
        mean_diff=float(flat.mean()), sample_ci=_t_interval(flat, level), n_samples=len(flat),
        client_mean_diff=float(clients.mean()), client_ci=_t_interval(clients, level), n_clients=len(clients),
        p_value=sign_flip_p(clients, seed=seed), a_better=int((flat < 0).sum()), level=level)


def describe(c: PairedComparison, a: str, b: str) -> str:
    """One paragraph: the difference, both intervals, the test and what follows from it."""
    pct = int(round(c.level * 100))
    lo, hi = c.client_ci
    slo, shi = c.sample_ci
    verdict = (f"{a} is better" if c.client_ci[1] < 0 else f"{b} is better") if c.significant else \
        "the difference is not significant"
    return (f"{a} − {b} held-out loss per sample: {c.mean_diff:+.4f} ({pct}% CI {slo:+.4f} … {shi:+.4f}, "
            f"{c.n_samples} samples; {a} lower on {c.a_better}). Over clients, the unit that is independent: "
            f"{c.client_mean_diff:+.4f} ({pct}% CI {lo:+.4f} … {hi:+.4f}, {c.n_clients} clients; sign-flip "
            f"p = {c.p_value:.3g}): {verdict}.")
