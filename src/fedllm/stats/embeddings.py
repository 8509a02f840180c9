"""Sentence embeddings of a seeded choice of clients' instruction–response pairs, projected to 2-D
with t-SNE: how separable the clients' data are (FedLLM-Bench Fig. 3).

The embedded text of a sample is ``instruction + "\\n\\n" + response`` (the chosen reply for preference
data); all-MiniLM-L6-v2 reads its first 256 word pieces. Vectors are cached per (embedder, text).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fedllm.hashing import stable_hash
from fedllm.jsonl import JsonlCache
from fedllm.models.embedder import Embedder
from fedllm.progress import progress_bar
from fedllm.stats.corpus import Federation, instruction_text, response_text
from fedllm.stats.sampling import seeded_order

MIN_POINTS = 5


def pair_text(sample: Any) -> str:
    return f"{instruction_text(sample)}\n\n{response_text(sample)}"


def choose_clients(fed: Federation, num_clients: int, seed: int) -> list[str]:
    """`num_clients` client ids with samples, a seeded choice, in federation order."""
    ids = [cid for cid, samples in fed.clients.items() if samples]
    if len(ids) <= num_clients:
        return ids
    picked = set(np.random.default_rng(seed).choice(len(ids), size=num_clients, replace=False).tolist())
    return [cid for i, cid in enumerate(ids) if i in picked]


def embed_clients(
    fed: Federation,
    embedder: Embedder,
    *,
    num_clients: int = 10,
    per_client: int = 50,
    seed: int = 0,
    cache_dir: Path | None = None,
    batch: int = 64,
    console: Console | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(vectors (n, d), client id of each row) of up to `per_client` seeded samples of each chosen client."""
    name = getattr(embedder, "name", None)
    cache = JsonlCache(cache_dir / f"embed-{stable_hash('embed', name)}.jsonl" if cache_dir and name else None)
    texts: list[str] = []
    owners: list[str] = []
    for cid in choose_clients(fed, num_clients, seed):
        samples = fed.clients[cid]
        for idx in sorted(seeded_order(len(samples), seed, cid)[:per_client]):
            texts.append(pair_text(samples[idx]))
            owners.append(cid)
    keys = [stable_hash(t) for t in texts]
    missing = list(dict.fromkeys(k for k in keys if cache.get(k) is None))
    by_key = dict(zip(keys, texts))
    with progress_bar(console, f"embeddings ({name or 'custom embedder'})", len(missing)) as advance:
        for j in range(0, len(missing), batch):
            chunk = missing[j:j + batch]
            vectors = np.asarray(embedder([by_key[k] for k in chunk]), dtype=np.float32)
            cache.put_many((k, [round(float(x), 6) for x in v]) for k, v in zip(chunk, vectors))
            advance(len(chunk))
    if not texts:
        return np.zeros((0, 0), dtype=np.float32), []
    return np.asarray([cache.data[k] for k in keys], dtype=np.float32), owners


def tsne_2d(vectors: np.ndarray, seed: int = 0, cache: JsonlCache | None = None) -> tuple[np.ndarray, float]:
    """t-SNE to 2-D, seeded, with perplexity min(30, (n - 1) / 3) so that small n works; (points, perplexity).
    The projection is cached by (vectors, seed) when a cache is given."""
    n = len(vectors)
    if n < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {n}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float64)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    key = stable_hash("tsne", seed, perplexity, hashlib.sha256(vectors.tobytes()).hexdigest())
    if cache is not None and cache.get(key) is not None:
        return np.asarray(cache.data[key], dtype=np.float64), perplexity
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with threadpool_limits(1):  # OpenMP threads spin against each other on a busy CPU: 10x slower measured
        points = tsne.fit_transform(vectors)
    if cache is not None:
        cache.put_many([(key, points.tolist())])
    return points, perplexity
