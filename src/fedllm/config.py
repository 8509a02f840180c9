"""Typed run configuration: YAML file + dotted ``key=value`` overrides, validated all at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from fedllm.fl.codec import WireSpec
from fedllm.fl.params import STRICT, FLParams
from fedllm.hashing import stable_hash


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message lists every problem."""


class _Section(BaseModel):
    model_config = STRICT


class ModelConfig(_Section):
    name: str = Field("smollm2-135m-instruct", description="HF model id, local dir, .gguf file, 'smollm2-135m-instruct' (embedded) or 'tiny' (random, tests)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on CUDA with bf16; on a CPU, whichever a short cached calibration at the model's "
                                                                          "shapes finds faster")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    gradient_checkpointing: bool = Field(False, description="trade ~40% speed for memory")
    revision: str | None = None
    trust_remote_code: bool = False


class LoraConfig(_Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    freeze_a: Optional[bool] = Field(None, description="FFA-LoRA: A frozen at its seeded init, only B trained and sent "
                                                       "(half the message); null: on under fl.dp, off otherwise")
    hetero: Optional[Literal["pad", "flora"]] = Field(
        None, description="heterogeneous client ranks r_i <= r: pad (HeteroLoRA: a client trains the first r_i components "
                          "of the rank-r adapter, zero-padded back) or flora (FLoRA: fresh rank-r_i LoRAs each round, "
                          "stacked exactly and merged into the base); null: every client trains rank r")
    client_ranks: Union[list[int], dict[str, int], None] = Field(
        None, description="lora.hetero's client ranks (each 1..r): a list assigned cyclically in client order, or "
                          "{client id: rank} (unnamed clients: r); null: r for every client")

    @model_validator(mode="after")
    def _client_ranks(self) -> LoraConfig:
        if self.client_ranks is None:
            return self
        if self.hetero is None:
            raise ValueError("lora.client_ranks needs lora.hetero: pad or flora")
        ranks = self.client_ranks if isinstance(self.client_ranks, list) else list(self.client_ranks.values())
        if not ranks:
            raise ValueError("lora.client_ranks is empty; give ranks or null")
        if bad := [v for v in ranks if not 0 < v <= self.r]:
            raise ValueError(f"lora.client_ranks {bad}: every client rank must be within 1..lora.r={self.r}")
        return self


class PeftConfig(_Section):
    """Which PEFT method the clients train (peft's implementation) and its settings; LoRA and DoRA
    take theirs from the ``lora`` section."""

    method: str = Field("lora", description="lora, dora, ia3, prompt (prompt tuning), ptuning (P-tuning) or prefix "
                                            "(prefix tuning)")
    num_virtual_tokens: int = Field(20, gt=0, description="prompt, ptuning, prefix: virtual tokens in front of the input")
    encoder_hidden_size: Optional[int] = Field(None, gt=0, description="ptuning's MLP and prefix's projection width "
                                                                      "(null: the model's hidden size)")
    prefix_projection: bool = Field(False, description="prefix: produce the keys and values with an MLP")
    prompt_init: Literal["vocab", "random"] = Field("vocab", description="prompt, ptuning, prefix: virtual tokens start as "
                                                                         "random vocabulary tokens' or N(0, 1)")
    ia3_target_modules: list[str] = Field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])
    ia3_feedforward_modules: list[str] = Field(default_factory=lambda: ["down_proj"],
                                               description="ia3: of its targets, those scaled at their input")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from fedllm.models.peft_methods import PEFT_METHODS

        return PEFT_METHODS.check(v)

    @model_validator(mode="after")
    def _ff_in_targets(self) -> PeftConfig:
        if stray := [m for m in self.ia3_feedforward_modules if m not in self.ia3_target_modules]:
            raise ValueError(f"ia3_feedforward_modules {stray} must also be in ia3_target_modules")
        return self

    @property
    def low_rank(self) -> bool:
        """LoRA-shaped adapters (A and B matrices): what FFA-LoRA, FedSA and rank settings act on."""
        return self.method in ("lora", "dora")


class DataConfig(_Section):
    dataset: str = Field("fed-pycode", description="registered dataset name or path to a FedLLM-Bench JSON file")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="held-out share of each client's samples")
    max_clients: int | None = Field(None, gt=0, description="keep only the first N clients (in file order)")
    clients: Optional[list[str]] = Field(None, description="federate only these client ids (in this order; with "
                                                           "max_clients, the first N of them)")
    template: str = Field("chat", description="chat (the model's own), alpaca or vicuna")
    max_length: int = Field(384, gt=8, description="tokens per sample after formatting; longer samples are truncated")
    build: dict[str, Any] = Field(default_factory=dict, description="arguments for building a registered dataset")

    @field_validator("template")
    @classmethod
    def _known_template(cls, v: str) -> str:
        from fedllm.data.formatting import TEMPLATES

        return TEMPLATES.check(v)

    @field_validator("dataset")
    @classmethod
    def _dataset_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name a registered dataset (`fedllm data list`) or a FedLLM-Bench JSON file")
        return v

    @model_validator(mode="after")
    def _build_options(self) -> DataConfig:
        """Build options must be ones the registered source knows (a file takes none)."""
        from fedllm.data.sources import SOURCES, get_source

        if self.dataset.lower() in SOURCES:
            try:
                get_source(self.dataset).resolve_kwargs(self.build)
            except TypeError as e:
                raise ValueError(f"data.build: {e}") from None
        elif self.build:
            raise ValueError(f"data.build options {sorted(self.build)} only apply to a registered dataset, "
                             f"not to the file {self.dataset!r}")
        return self


@dataclass(config=STRICT)
class FLConfig(FLParams):
    """The algorithm's settings (``FLParams``) plus the engine's: rounds and participation."""

    rounds: int = Field(10, gt=0)
    clients_per_round: int = Field(2, gt=0, description="clients sampled per round (S); at most the number of clients")
    sampling: Literal["uniform", "poisson"] = Field("uniform", description="uniform: S clients without replacement; "
                                                    "poisson: each client with q = S/N (DP-FedAvg's textbook sampling)")
    local_client: Union[str, int] = Field(0, description="the Local baseline's client: id, or index into the client list; "
                                                           "pooled: every client's training data in one client "
                                                           "(the centralised baseline; a client of that id wins)")


class TrainConfig(_Section):
    objective: str = Field("sft", description="sft (instruction data) or dpo (preference pairs)")
    beta: float = Field(0.1, gt=0, description="DPO's β: the scale of the implicit reward (TRL's and FedLLM-Bench's 0.1)")
    reference: Literal["base", "round_start"] = Field(
        "base", description="DPO's reference policy: the base model with the adapter disabled (FedLLM-Bench), or the "
                            "adapter the client received this round (TRL ≥ 1.0 with a PeftModel)")
    optimizer: str = Field("adamw", description="local optimizer, fresh every round: adamw, sgd or sgdm "
                                                "(SCAFFOLD as published uses sgd)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum of the sgdm local optimizer")
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

        return OBJECTIVES.check(v)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        from fedllm.train.local import LOCAL_OPTIMIZERS

        return LOCAL_OPTIMIZERS.check(v)

    @field_validator("max_grad_norm")
    @classmethod
    def _positive_clip(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("max_grad_norm must be positive, or null to disable clipping")
        return v

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


class PersonalConfig(_Section):
    """Personalised models and their evaluation: each client's adapter on its own held-out split,
    beside the global adapter's number for the same client (methods ditto, pfedme and fedsa keep a
    personal adapter; finetune_steps gives any method FedAvg+FT's)."""

    finetune_steps: int = Field(0, ge=0, description="FedAvg+FT: before personal evaluation each client fine-tunes "
                                                     "the adapter it would use (its personal one, else the global) "
                                                     "for k steps on its own training data; 0: no fine-tuning")
    lr: Optional[float] = Field(None, gt=0, description="learning rate of the fine-tuning steps; null: train.lr")
    every: bool = Field(False, description="evaluate personal adapters at every evaluation, not only after the last round")


class GroupsConfig(_Section):
    """Grouped federations (FedLLM-Bench's FedSamLang / FedSimLang): one global adapter per group of
    clients, each group federating alone, trained and evaluated in one run."""

    by: Optional[str] = Field(None, description="a client attribute (language, category, domain, … or client: every "
                                                "client alone) or a preset: fedsamlang (a group per language), "
                                                "fedsimlang (a group per language family)")
    mapping: Union[dict[str, str], str, None] = Field(None, description="client id -> group, or a YAML/JSON file of it")
    families: Optional[dict[str, list[str]]] = Field(None, description="fedsimlang: family -> languages, replacing "
                                                                       "FedLLM-Bench's five families")

    @model_validator(mode="after")
    def _one_rule(self) -> GroupsConfig:
        if self.by is not None and self.mapping is not None:
            raise ValueError("set one of groups.by or groups.mapping, not both")
        if self.families is not None and self.by != "fedsimlang":
            raise ValueError("groups.families applies to groups.by=fedsimlang")
        return self

    @property
    def enabled(self) -> bool:
        return self.by is not None or self.mapping is not None


class CommConfig(_Section):
    """How messages travel: a codec per direction (fp16/bf16, int8, top-k with error feedback on the
    uplink) and zstd; the default sends every tensor bit for bit."""

    up: WireSpec = Field(default_factory=WireSpec, description="client → server (updates)")
    down: WireSpec = Field(default_factory=WireSpec, description="server → client (the global adapter); "
                                                                "error feedback applies to the uplink only")


class CheckpointConfig(_Section):
    every: int = Field(1, ge=0, description="checkpoint every k rounds (0: only at the end)")
    keep: int = Field(2, ge=1, description="keep the newest N round checkpoints")


class SecAggConfig(_Section):
    """SecAgg+ (Flower's secure aggregation): the server learns only the round's weighted mean update."""

    num_shares: Union[int, float] = Field(3, gt=0, description="shares of each node's key (int > 2, or a share of the "
                                                               "round's nodes); more tolerates more dropouts")
    reconstruction_threshold: Union[int, float] = Field(2, gt=0, description="shares needed to rebuild a key (int < "
                                                                             "num_shares, or a share of them)")
    clipping_range: float = Field(1.0, gt=0, description="a node's weighted update is clipped to ±this before "
                                                         "quantization (it reports how many entries were clipped)")
    quantization_range: int = Field(4194304, gt=1, description="quantization levels (2**22); nodes × this must stay "
                                                               "below 2**32")


class DeployConfig(_Section):
    """How the server treats clients it reaches over a network (Flower); in-process every client replies."""

    min_replies: int = Field(1, ge=1, description="a round with fewer client replies than this is skipped "
                                                  "(the global adapter stays)")
    round_timeout: float = Field(3600.0, gt=0, description="seconds the server waits for a round's replies; a "
                                                           "client that has not answered by then is logged as missing")
    min_nodes: int = Field(1, ge=1, description="nodes the server waits for before the first round")
    node_wait: float = Field(300.0, gt=0, description="seconds to wait for deploy.min_nodes nodes to connect")
    secagg: Optional[SecAggConfig] = Field(None, description="secure aggregation (SecAgg+, at least 3 nodes per "
                                                             "round): {num_shares: 3, reconstruction_threshold: 2}")


class FixedDist(_Section):
    """The same value for every client."""

    dist: Literal["fixed"] = "fixed"
    value: float = Field(ge=0)


class UniformDist(_Section):
    """Uniform between low and high."""

    dist: Literal["uniform"]
    low: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> UniformDist:
        if self.high < self.low:
            raise ValueError(f"uniform needs low <= high, got low={self.low} high={self.high}")
        return self


class LogNormalDist(_Section):
    """Log-normal: median·e^(σ·z), z ~ N(0, 1); device speeds spread over orders of magnitude like this."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0, description="std of the log (0.6: the middle 68% spans ×/÷1.8)")


#: a per-client quantity: a number (fixed), or {dist: fixed|uniform|lognormal, ...}
Dist = Union[FixedDist, UniformDist, LogNormalDist]


def _number_is_fixed(v: Any) -> Any:
    """A plain number (YAML's 2e12 arrives as a string) is shorthand for {dist: fixed, value: number}."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ValueError("expected a number or {dist: fixed|uniform|lognormal, ...}") from None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"dist": "fixed", "value": v}
    if isinstance(v, dict) and "dist" not in v:
        raise ValueError(f"name the distribution: dist: fixed (value), uniform (low, high) or lognormal (median, "
                         f"sigma); got {v}")
    return v


def _lowest(d: Dist) -> float:
    return d.value if isinstance(d, FixedDist) else d.low if isinstance(d, UniformDist) else d.median


class SystemsTier(_Section):
    """A device tier: the share of clients in it and the quantities it sets (unset ones: the section's)."""

    share: float = Field(gt=0, le=1)
    name: Optional[str] = None
    flops: Optional[Dist] = Field(None, discriminator="dist")
    up: Optional[Dist] = Field(None, discriminator="dist")
    down: Optional[Dist] = Field(None, discriminator="dist")
    latency: Optional[Dist] = Field(None, discriminator="dist")

    _fixed = field_validator("flops", "up", "down", "latency", mode="before")(_number_is_fixed)


class SystemsConfig(_Section):
    """Simulated system heterogeneity (as FedScale and FederatedScope-LLM simulate it): every client
    gets a compute speed, bandwidths and a latency, drawn once from (run seed, client id); a round
    takes each client latency + bytes down/down + FLOPs/flops + bytes up/up simulated seconds, and a
    client slower than the deadline is left out of the round's aggregation."""

    flops: Dist = Field(default_factory=lambda: LogNormalDist(dist="lognormal", median=2e12, sigma=0.6),
                        discriminator="dist", description="compute speed, FLOP/s")
    up: Dist = Field(default_factory=lambda: LogNormalDist(dist="lognormal", median=2.5e6, sigma=0.8),
                     discriminator="dist", description="uplink, bytes/s (2.5e6: 20 Mbit/s)")
    down: Dist = Field(default_factory=lambda: LogNormalDist(dist="lognormal", median=1.25e7, sigma=0.8),
                       discriminator="dist", description="downlink, bytes/s (1.25e7: 100 Mbit/s)")
    latency: Dist = Field(default_factory=lambda: FixedDist(value=0.05), discriminator="dist",
                          description="seconds a round adds per client (connection set-up, round trips)")
    tiers: Optional[list[SystemsTier]] = Field(None, description="device tiers [{share, flops, up, down, latency}, "
                                                                 "...] (shares sum to 1); a client falls in one by "
                                                                 "its seeded draw")
    deadline: Optional[float] = Field(None, gt=0, description="straggler deadline in simulated seconds: later "
                                                              "clients are not aggregated; null: wait for all")

    _fixed = field_validator("flops", "up", "down", "latency", mode="before")(_number_is_fixed)

    @model_validator(mode="after")
    def _check(self) -> SystemsConfig:
        if self.tiers is not None:
            if not self.tiers:
                raise ValueError("tiers is empty: list at least one tier, or set it to null")
            total = sum(t.share for t in self.tiers)
            if abs(total - 1) > 1e-6:
                raise ValueError(f"tiers: shares must sum to 1, they sum to {total:g}")
        for where, section in [("", self)] + [(f"tiers[{i}].", t) for i, t in enumerate(self.tiers or [])]:
            for key in ("flops", "up", "down"):
                d = getattr(section, key)
                if d is not None and _lowest(d) <= 0:
                    raise ValueError(f"{where}{key} is a rate and must stay above 0 (got {d.model_dump()})")
        return self


class OffsiteConfig(_Section):
    """Offsite-tuning (Xiao et al. 2023; FederatedScope-LLM's FedOT): clients tune the adapter (LoRA on the
    first and last k decoder layers) on an emulator, the base model with a share of its middle layers
    dropped uniformly; the server evaluates the adapter plugged into the full model."""

    drop_rate: float = Field(0.0, ge=0, lt=1, description="share of the middle layers the emulator drops (the paper's "
                                                          "0.2 and 0.5); 0: offsite-tuning off")
    adapter_layers: int = Field(2, gt=0, description="k: the adapter is the first and last k decoder layers")
    eval_emulator: bool = Field(True, description="also report the held-out loss on the emulator (emulator_loss), "
                                                  "beside the full model's (plug-in)")

    @property
    def enabled(self) -> bool:
        return self.drop_rate > 0


RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]*")


class RunConfig(_Section):
    name: str = Field("run", description="the run directory's name under output_dir (letters, digits, _ . + = , -)")
    output_dir: str = "runs"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    peft: PeftConfig = Field(default_factory=PeftConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    fl: FLConfig = Field(default_factory=FLConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    comm: CommConfig = Field(default_factory=CommConfig)
    personal: PersonalConfig = Field(default_factory=PersonalConfig)
    offsite: OffsiteConfig = Field(default_factory=OffsiteConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    systems: Optional[SystemsConfig] = Field(None, description="simulated device speeds, bandwidths and a straggler "
                                                               "deadline ({} for the defaults); null: off")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        """A run writes only under output_dir: no path separators, no '..', no leading dot or dash."""
        if not RUN_NAME.fullmatch(v):
            raise ValueError("a run name is one directory name of letters, digits and _ . + = , - "
                             "(not empty, no '/', not starting with '.' or '-'), e.g. fedavg-r20")
        return v

    @model_validator(mode="after")
    def _lora_settings_apply(self) -> RunConfig:
        if self.lora.freeze_a and not self.peft.low_rank:
            raise ValueError(f"lora.freeze_a (FFA-LoRA) needs LoRA's A matrices; peft.method={self.peft.method} has none")
        if self.lora.hetero is not None:
            from fedllm.fl.hetero_lora import config_problem

            if why := config_problem(self.lora.hetero, self.fl, peft_method=self.peft.method, ffa=self.ffa_lora,
                                     finetune_steps=self.personal.finetune_steps):
                raise ValueError(why)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def ffa_lora(self) -> bool:
        """Whether LoRA's A is frozen (FFA-LoRA): as set, or by default under differential privacy."""
        if not self.peft.low_rank:
            return False
        return self.lora.freeze_a if self.lora.freeze_a is not None else self.fl.dp is not None

    def objective_options(self) -> dict[str, Any]:
        """The train.* settings the objective reads (DPO: beta and reference; SFT: none)."""
        from fedllm.train.objectives import OBJECTIVES

        return {k: getattr(self.train, k) for k in OBJECTIVES[self.train.objective].options}

    def warnings(self) -> list[str]:
        """Settings that have no effect with the rest of this configuration (one line each)."""
        from fedllm.fl import ignored_params

        out = ignored_params(self.fl)
        defaults = TrainConfig()
        for key in ("beta", "reference"):
            if key not in self.objective_options() and getattr(self.train, key) != getattr(defaults, key):
                out.append(f"train.{key}={getattr(self.train, key)} is ignored by train.objective={self.train.objective}")
        if self.train.optimizer != "sgdm" and self.train.momentum != defaults.momentum:
            out.append(f"train.momentum={self.train.momentum} is ignored by train.optimizer={self.train.optimizer}")
        if not self.offsite.enabled:
            out += [f"offsite.{k}={getattr(self.offsite, k)} is ignored: offsite-tuning is off (offsite.drop_rate=0)"
                    for k in ("adapter_layers", "eval_emulator") if getattr(self.offsite, k) != getattr(OffsiteConfig(), k)]
        if self.train.local_steps != "dynamic" and self.train.epochs != defaults.epochs:
            out.append(f"train.epochs={self.train.epochs} is ignored: train.local_steps is fixed "
                       f"({self.train.local_steps}), not 'dynamic'")
        return out


#: keys a resumed run may differ in (where the run directory is now), everything else must match
LOCATION_KEYS = ("name", "output_dir")


def config_fingerprint(cfg: RunConfig) -> str:
    """Stable hash of everything that decides what a run computes (its location excluded)."""
    data = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in LOCATION_KEYS}
    return stable_hash(data, size=8)


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two config dumps."""
    out = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in LOCATION_KEYS:
            continue
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _parse_value(text: str) -> Any:
    """An override value is parsed as YAML: `3` is an int, `[a, b]` a list, `null` None."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy); values are parsed as YAML."""
    settings = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. fl.rounds=20)")
        key, value = item.split("=", 1)
        settings[key.strip()] = _parse_value(value)
    return apply_settings(data, settings)


def apply_settings(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``{"fl.rounds": 20}``) in a nested dict (a copy), in order."""
    import copy

    out = copy.deepcopy(data)
    for key, value in settings.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if child is None:  # an optional section that is off (null) is switched on by setting a key of it
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"setting {key}={value!r}: {p!r} is a value, not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}): {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith(("int", "literal", "function")))
        msg = e["msg"]
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key (check spelling; `fedllm config` prints every key)"
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
        data = read_yaml_mapping(p, "of sections")
    return build_config(data, overrides, source)


def read_yaml_mapping(path: Path, what: str, error: type[ConfigError] = ConfigError) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file: {}); ``error`` names the file and what
    is wrong in one line (``what`` says what the mapping holds, e.g. "of sections")."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(f"{path}: top level must be a mapping {what}, got {type(loaded).__name__}")
    return loaded


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
