"""Dataset analysis of a federation, after FedLLM-Bench section 3.3: the Table 1 row, quantity, length
and language distributions across clients, data quality by IFD, preference statistics, t-SNE of
sentence embeddings and top root verbs; written as PNG figures, stats.json and a README.md card.

An application above data/, models/ and train/ (``fedllm data stats``); data/ does not import it.
Modules: corpus (reading the federation), sampling (seeded per-client choices), lengths, truncation
(samples the training max_length leaves without a response token), ifd, embeddings, verbs, figures,
card, and pipeline (running them all: :func:`analyze`, :func:`run_stats`).
"""

from __future__ import annotations

from fedllm.stats.corpus import Federation, from_dataset, from_file, load_federation
from fedllm.stats.pipeline import StatsOptions, analyze, run_stats, table1

__all__ = ["Federation", "StatsOptions", "analyze", "from_dataset", "from_file", "load_federation", "run_stats", "table1"]
