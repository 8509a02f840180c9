"""The eight FedLLM-Bench methods as named presets of aggregator × server optimizer × client method.

``fl.algorithm: fedadam`` means what it always meant; ``fl.aggregator`` and ``fl.server_optimizer``
swap one part of a preset (e.g. FedAdam's optimizer over a coordinate-wise median).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedllm.fl.registries import register_algorithm
from fedllm.fl.params import Weighting


@dataclass(frozen=True)
class Preset:
    """A method by its parts; ``pinned`` fixes FLParams values the method does not let vary."""

    optimizer: str
    method: str = "plain"
    aggregator: str = "mean"
    #: the Local baseline: one client trains alone and nothing is averaged.
    single_client: bool = False
    #: the weighting OpenFedLLM hard-codes for this method (compat: openfedllm); None: fl.weighting.
    openfedllm_weighting: Weighting | None = None
    pinned: dict[str, Any] = field(default_factory=dict)
    description: str = ""


register_algorithm("local")(Preset(
    optimizer="sgd", aggregator="single", single_client=True, pinned={"server_lr": 1.0},
    description="Local baseline: one client trains alone; w ← w + Δ (weights and η_s play no part)"))
register_algorithm("fedavg")(Preset(
    optimizer="sgd", openfedllm_weighting="samples",
    description="FedAvg (McMahan et al. 2017): w ← w + η_s·Σ p_i Δ_i"))
register_algorithm("fedprox")(Preset(
    optimizer="sgd", method="fedprox", openfedllm_weighting="samples",
    description="FedProx (Li et al. 2020): FedAvg server; clients add μ/2·‖θ − w‖²"))
register_algorithm("scaffold")(Preset(
    optimizer="sgd", method="scaffold", openfedllm_weighting="samples",
    description="SCAFFOLD (Karimireddy et al. 2020, option II): control variates correct client drift"))
register_algorithm("fedavgm")(Preset(
    optimizer="momentum", openfedllm_weighting="samples",
    description="FedAvgM (Hsu et al. 2019): FedAvg with server momentum"))
register_algorithm("fedadagrad")(Preset(
    optimizer="adagrad", openfedllm_weighting="uniform",
    description="FedAdagrad (Reddi et al. 2021): Adagrad on the server"))
register_algorithm("fedadam")(Preset(
    optimizer="adam", openfedllm_weighting="uniform",
    description="FedAdam (Reddi et al. 2021): Adam on the server"))
register_algorithm("fedyogi")(Preset(
    optimizer="yogi", openfedllm_weighting="uniform",
    description="FedYogi (Reddi et al. 2021): Yogi on the server"))
register_algorithm("ditto")(Preset(
    optimizer="sgd", method="ditto",
    description="Ditto (Li et al. 2021): FedAvg for w; each client also trains a personal v_i with λ/2·‖v − w‖²"))
register_algorithm("pfedme")(Preset(
    optimizer="sgd", method="pfedme",
    description="pFedMe (Dinh et al. 2020): personalised θ_i via Moreau envelopes; w ← w + β·Σ p_i (w_i − w), β = η_s"))
register_algorithm("fedsa")(Preset(
    optimizer="sgd", method="fedsa",
    description="FedSA-LoRA (Guo et al. 2025): LoRA A shared and aggregated, B kept by each client"))
