"""FLParams: the one definition of a federated algorithm's settings, validated on construction.

The run configuration's ``fl`` section extends it with the engine's keys (rounds, clients per
round); ``build_algorithm`` takes it as it is. A method (``algorithm``) is a named preset of an
aggregator, a server optimizer and a client method; ``aggregator``, ``server_optimizer`` and
``transforms`` swap or add parts. Each component reads only the keys it names in ``reads``; a key set
away from its default that no component reads is reported by :func:`fedllm.fl.server.ignored_params`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from fedllm.fl.registries import AGGREGATORS, ALGORITHMS, SERVER_OPTIMIZERS, TRANSFORMS, resolve_spec

Compat = Literal["paper", "openfedllm"]
Weighting = Literal["samples", "uniform", "seen"]

#: pydantic settings shared by every typed config of the project: unknown keys and NaN/inf are errors.
STRICT = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


DPMode = Literal["fedllm-bench", "dp-fedavg", "local"]


def dp_transform(mode: str) -> str:
    """The update transform that implements a DP mode."""
    return "dp-" + mode.removeprefix("dp-")


class DPConfig(BaseModel):
    """User-level differential privacy (one client = one user); README "Differential privacy" has
    each mode's threat model."""

    model_config = STRICT

    mode: DPMode = Field(..., description="fedllm-bench: FedLLM-Bench's noise on each upload (nominal ε); dp-fedavg: "
                                          "central DP (McMahan et al. 2018) with an accountant; local: clip and noise on "
                                          "the client")
    epsilon: Optional[float] = Field(None, gt=0, description="fedllm-bench: the ε in the paper's σ formula; dp-fedavg and "
                                                             "local: the target ε for the planned rounds (solves z)")
    delta: float = Field(1e-4, gt=0, lt=1, description="δ of the (ε, δ) guarantee (FedLLM-Bench used 1e-4)")
    sigma: Optional[float] = Field(None, gt=0, description="fedllm-bench: a fixed noise std instead of the formula (Table 8)")
    noise_multiplier: Optional[float] = Field(None, gt=0, description="dp-fedavg and local: z, the noise std in units of "
                                                                      "the clip norm (instead of a target ε)")
    clip: float = Field(1.0, gt=0, description="C: the L2 bound of a client update (fedllm-bench: the gradient bound in Δ_l)")
    accountant: Literal["rdp", "pld"] = Field("rdp", description="dp-accounting's accountant (pld needs fl.sampling: poisson)")
    adaptive_clip: bool = Field(False, description="dp-fedavg: adapt C to a quantile of the update norms (Andrew et al. 2021)")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="γ: the share of updates adaptive clipping leaves unclipped")
    clip_lr: float = Field(0.2, gt=0, description="η_C: the geometric learning rate of the clip norm")
    clipped_count_stddev: Optional[float] = Field(None, gt=0, description="σ_b: noise std of the unclipped count; null: "
                                                                           "expected clients per round / 20 (the paper)")
    secure_noise: bool = Field(False, description="draw the noise seed from the OS's entropy instead of the run seed "
                                                  "(seeded noise is reproducible, but offers no privacy against anyone "
                                                  "who knows the seed)")

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPConfig:
        if self.mode == "fedllm-bench":
            if (self.epsilon is None) == (self.sigma is None):
                raise ValueError("fedllm-bench takes exactly one of epsilon (the paper's formula) or sigma (fixed noise)")
            if self.noise_multiplier is not None or self.adaptive_clip:
                raise ValueError("noise_multiplier and adaptive_clip apply to dp-fedavg, not fedllm-bench")
        else:
            if (self.epsilon is None) == (self.noise_multiplier is None):
                raise ValueError(f"{self.mode} takes exactly one of epsilon (a target solved for z) or noise_multiplier (z)")
            if self.sigma is not None:
                raise ValueError(f"sigma applies to fedllm-bench; {self.mode} takes noise_multiplier")
            if self.adaptive_clip and self.mode != "dp-fedavg":
                raise ValueError("adaptive_clip applies to dp-fedavg only")
        return self


@dataclass(config=STRICT)
class FLParams:
    """Hyper-parameters of the federated algorithm; each component reads the ones it needs."""

    algorithm: str = Field("fedavg", description="a method preset: local, fedavg, fedprox, scaffold, fedavgm, "
                                                 "fedadagrad, fedadam, fedyogi; personalised: ditto, pfedme, fedsa")
    compat: Compat = Field("paper", description="paper: the original papers; openfedllm: the FedLLM-Bench/OpenFedLLM code exactly")
    weighting: Weighting = Field("samples", description="p_i ∝ training samples held, uniform, or samples seen this round")
    server_lr: Optional[float] = Field(None, gt=0, description="η_s; null: the optimizer's default (1, or 1e-3 for adaptive ones)")
    mu: float = Field(0.01, ge=0, description="FedProx proximal weight μ")
    ditto_lambda: float = Field(0.1, ge=0, description="Ditto: λ of the personal adapter's pull λ/2·‖v − w‖² toward the global w")
    personal_steps: Optional[int] = Field(None, gt=0, description="Ditto: steps of personal training per round; null: "
                                                                  "as many as the global local steps")
    pfedme_lambda: float = Field(15.0, gt=0, description="pFedMe: λ of the Moreau envelope λ/2·‖θ − w_i‖² (the paper's 15)")
    pfedme_inner_steps: int = Field(5, gt=0, description="pFedMe: K optimizer steps on θ per update of the local w_i")
    pfedme_lr: float = Field(0.005, gt=0, description="pFedMe: η of the local update w_i ← w_i − η·λ·(w_i − θ) (the paper's 0.005)")
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
    dp: Optional[DPConfig] = Field(None, description="user-level differential privacy: {mode: dp-fedavg, epsilon: 1, ...}")

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
            name = spec.get("name") if isinstance(spec, dict) else spec
            if isinstance(name, str) and name.startswith("dp-"):
                problems.append(f"[{i}] {name!r} is set with fl.dp (mode: {name.removeprefix('dp-')}), which also "
                                f"accounts for it")
                continue
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
        if self.dp is not None:
            if getattr(preset, "method", "plain") == "scaffold":
                raise ValueError("fl.dp with scaffold: its control variates Δc_i leave the client without noise; "
                                 "use fedavg, fedprox, fedavgm or an adaptive optimizer")
            if self.dp.mode == "dp-fedavg" and self.aggregator is not None and self.aggregator["name"] != "mean":
                raise ValueError("fl.dp dp-fedavg bounds the sensitivity of a mean of clipped updates; robust aggregators "
                                 "(fl.aggregator) have another sensitivity")
            if getattr(preset, "single_client", False):
                raise ValueError("fl.dp does not apply to the local baseline, which releases no aggregate")
        return self
