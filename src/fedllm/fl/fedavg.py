"""FedAvg (McMahan et al. 2017): w ← w + η_s·Σ p_i Δ_i; OpenFedLLM weights by held samples."""

from __future__ import annotations

from fedllm.fl.base import Algorithm, register_algorithm


@register_algorithm("fedavg")
class FedAvg(Algorithm):
    """Weighted mean of client deltas applied with server lr η_s (default 1: plain averaging)."""

    compat_weighting = "samples"  # OpenFedLLM: sample_num / sample_this_round
