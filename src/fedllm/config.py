"""Typed run configuration: YAML file + dotted ``key=value`` overrides, validated all at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedllm.fl.base import FLParams


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message lists every problem."""


def _registered(value: str, names: Any, what: str) -> str:
    """Check a name against a registry so a typo is reported with the config's other errors."""
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(sorted(names))}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("smollm2-135m-instruct", description="HF model id, local dir, .gguf file, 'smollm2-135m-instruct' (embedded) or 'tiny' (random, tests)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 only on CUDA with bf16 or CPUs with AMX, else fp32")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    gradient_checkpointing: bool = Field(False, description="trade ~40% speed for memory")
    revision: str | None = None
    trust_remote_code: bool = False


class LoraConfig(_Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class DataConfig(_Section):
    dataset: str = Field("fed-pycode", description="registered dataset name or path to a FedLLM-Bench JSON file")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of each client's samples")
    max_clients: int | None = Field(None, gt=0, description="keep only the first N clients (in file order)")
    template: str = Field("chat", description="chat (the model's own), alpaca or vicuna")
    max_length: int = Field(384, gt=8, description="tokens per sample after formatting; longer samples are truncated")
    build: dict[str, Any] = Field(default_factory=dict, description="arguments for building a registered dataset")

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from fedllm.data.formatting import TEMPLATES

        return _registered(v, TEMPLATES, "template")


class FLConfig(_Section):
    algorithm: str = "fedavg"
    compat: Literal["paper", "openfedllm"] = "paper"
    weighting: Literal["samples", "uniform", "seen"] = "samples"
    rounds: int = Field(10, gt=0)
    clients_per_round: int = Field(2, gt=0)
    local_client: str | int = Field(0, description="the Local baseline's client: id, or index into the client list")
    server_lr: float | None = Field(None, gt=0)
    mu: float = Field(0.01, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    bias_correction: bool = False

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        from fedllm.fl import ALGORITHMS

        return _registered(v, ALGORITHMS, "algorithm")

    def params(self) -> FLParams:
        return FLParams(
            algorithm=self.algorithm, compat=self.compat, weighting=self.weighting, server_lr=self.server_lr,
            mu=self.mu, beta1=self.beta1, beta2=self.beta2, tau=self.tau, bias_correction=self.bias_correction,
        )


class TrainConfig(_Section):
    objective: str = "sft"
    local_steps: Union[int, Literal["dynamic"]] = Field(10, description="K per round, or 'dynamic' (FedLLM-Bench's rule)")
    epochs: float = Field(3.0, gt=0, description="E of the dynamic rule K_i = ceil(n_i·E/(T·S/N)/(B·GA))")
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(2e-4, gt=0)
    lr_min: float = Field(0.0, ge=0, description="cosine over rounds ends here")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, description="clip the local gradient norm; null disables")
    group_by_length: bool = Field(True, description="batch samples of similar length to spend compute on tokens, not padding")

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        from fedllm.train.objectives import OBJECTIVES

        return _registered(v, OBJECTIVES, "objective")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if isinstance(self.local_steps, int) and self.local_steps <= 0:
            raise ValueError("local_steps must be a positive integer or 'dynamic'")
        return self


class EvalConfig(_Section):
    every: int = Field(0, ge=0, description="held-out evaluation every k rounds (0: only at the end)")
    at_start: bool = Field(False, description="also evaluate the initial model (round 0)")
    max_samples_per_client: int | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0)


class CheckpointConfig(_Section):
    every: int = Field(1, ge=0, description="checkpoint every k rounds (0: only at the end)")
    keep: int = Field(2, ge=1, description="keep the newest N round checkpoints")


class RunConfig(_Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    fl: FLConfig = Field(default_factory=FLConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _parse_value(text: str) -> Any:
    """An override value is parsed as YAML: `3` is an int, `[a, b]` a list, `null` None."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. fl.rounds=20)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {p!r} is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}): {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith(("int", "literal", "function")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see `fedllm config --show` for all keys)"
        got = e.get("input")
        lines.append(f"  {loc or '<root>'}: {msg}" + (f" (got {got!r})" if not isinstance(got, dict) else ""))
    return "\n".join(lines)


def build_config(data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>") -> RunConfig:
    merged = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or defaults when ``path`` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    return build_config(data, overrides, source)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
