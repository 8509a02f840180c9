"""FLParams: the one definition of a federated algorithm's settings, validated on construction.

The run configuration's ``fl`` section extends it with the engine's keys (rounds, clients per
round); ``build_algorithm`` takes it as it is. A method (``algorithm``) is a named preset of an
aggregator, a server optimizer and a client method; ``aggregator``, ``server_optimizer`` and
``transforms`` swap or add parts. Each component reads only the keys it names in ``reads``; a key set
away from its default that no component reads is reported by :func:`fedllm.fl.server.ignored_params`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from fedllm.fl.registries import AGGREGATORS, ALGORITHMS, SERVER_OPTIMIZERS, TRANSFORMS, resolve_spec

Compat = Literal["paper", "openfedllm"]
Weighting = Literal["samples", "uniform", "seen"]

#: pydantic settings shared by every typed config of the project: unknown keys and NaN/inf are errors.
STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(config=STRICT)
class FLParams:
    """Hyper-parameters of the federated algorithm; each component reads the ones it needs."""

    algorithm: str = Field("fedavg", description="a method preset: local, fedavg, fedprox, scaffold, fedavgm, "
                                                 "fedadagrad, fedadam, fedyogi")
    compat: Compat = Field("paper", description="paper: the original papers; openfedllm: the FedLLM-Bench/OpenFedLLM code exactly")
    weighting: Weighting = Field("samples", description="p_i ∝ training samples held, uniform, or samples seen this round")
    server_lr: Optional[float] = Field(None, gt=0, description="η_s; null: the optimizer's default (1, or 1e-3 for adaptive ones)")
    mu: float = Field(0.01, ge=0, description="FedProx proximal weight μ")
    beta1: float = Field(0.9, ge=0, lt=1, description="first moment / server momentum (FedAvgM, FedAdam, FedYogi); FedLLM-Bench used 0.5")
    beta2: float = Field(0.99, ge=0, lt=1, description="second moment (FedAdam, FedYogi)")
    tau: float = Field(1e-3, gt=0, description="adaptivity τ of the adaptive server optimizers")
    bias_correction: bool = Field(False, description="Adam-style bias correction of m and v (FedAdam, FedYogi; paper semantics)")
    v0: Optional[Literal["zero", "tau2"]] = Field(
        None, description="initial second moment of the adaptive optimizers: zero, or τ² (Reddi et al.'s Algorithm 2 "
                          "asks v₋₁ ≥ τ²); null: the semantics' default (paper: zero, as Flower; openfedllm: τ²)")
    aggregator: Optional[Any] = Field(
        None, description="replace the preset's aggregator: a name (mean, median, trimmed_mean, krum, multikrum, "
                          "norm_bounded_mean) or {name: ..., options}")
    server_optimizer: Optional[str] = Field(
        None, description="replace the preset's server optimizer: sgd, momentum, adagrad, adam, yogi")
    transforms: list[Any] = Field(
        default_factory=list, description="update transforms after validation, in order: [{name: clip, max_norm: 1.0}]")
    max_update_norm: Optional[float] = Field(
        None, gt=0, description="drop a client update whose L2 norm (all tensors together) exceeds this bound")

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        return ALGORITHMS.check(v)

    @field_validator("server_optimizer")
    @classmethod
    def _known_optimizer(cls, v: str | None) -> str | None:
        return None if v is None else SERVER_OPTIMIZERS.check(v)

    @field_validator("aggregator")
    @classmethod
    def _aggregator_spec(cls, v: Any) -> dict[str, Any] | None:
        return None if v is None else resolve_spec(AGGREGATORS, v)

    @field_validator("transforms")
    @classmethod
    def _transform_specs(cls, v: list[Any]) -> list[dict[str, Any]]:
        out, problems = [], []
        for i, spec in enumerate(v):
            try:
                out.append(resolve_spec(TRANSFORMS, spec))
            except ValueError as e:
                problems.append(f"[{i}] {e}")
        if problems:
            raise ValueError("; ".join(problems))
        return out

    @model_validator(mode="after")
    def _compatible_parts(self) -> FLParams:
        preset = ALGORITHMS[self.algorithm]
        if getattr(preset, "single_client", False) and self.aggregator is not None:
            raise ValueError(f"fl.aggregator does not apply to {self.algorithm!r}: it trains one client alone")
        return self
