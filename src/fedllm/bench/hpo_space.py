"""The search space of `fedllm hpo`: one dimension per dotted config key, read from YAML and checked
against the run configuration's schema before any trial runs.

    train.lr: {log_uniform: [1.0e-5, 1.0e-3]}
    train.local_steps: {choice: [1, 2, 4]}        # or simply [1, 2, 4]
    fl.server_lr: {uniform: [0.5, 1.5]}
    lora.r: {int_uniform: [4, 16]}                # integers, both ends included
    fl.algorithm: {choice: [fedavg, fedprox]}
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedllm.config import ConfigError, RunConfig, build_config

KINDS = ("choice", "uniform", "log_uniform", "int_uniform")

#: keys a search may not vary, and why (a prefix covers its whole section)
RESERVED = {
    "name": "the trial's run directory is named by the study",
    "output_dir": "trials are written under the study directory (--out)",
    "fl.rounds": "the rounds are the fidelity: set --rounds (search) and --final-rounds",
    "data.dataset": "it changes the federation itself, so validation losses would not compare",
    "data.test_fraction": "it changes every client's test split, so validation losses would not compare",
    "data.build": "it changes the federation itself, so validation losses would not compare",
    "eval": "evaluation settings decide what the compared number measures, not what is trained",
    "groups": "grouped runs (one adapter per group) are not searched by fedllm hpo",
    "checkpoint": "checkpointing does not change what is trained",
    "deploy": "deployment settings do not apply to simulated trials",
}


def set_dotted(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of nested ``data`` with ``a.b.c`` set to ``value`` (sections created as needed)."""
    out = copy.deepcopy(data)
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value
    return out


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


@dataclass(frozen=True)
class Dimension:
    """One searched key: a finite choice, or a range (uniform, log-uniform, integers)."""

    key: str
    kind: str
    values: tuple[Any, ...] = ()  # choice
    low: float = 0.0  # ranges
    high: float = 0.0

    @property
    def encoded(self) -> bool:
        """Choices that are not plain scalars (lists, mappings) travel through Optuna as JSON strings."""
        return self.kind == "choice" and not all(_primitive(v) for v in self.values)

    def optuna_choices(self) -> list[Any]:
        return [json.dumps(v, sort_keys=True) for v in self.values] if self.encoded else list(self.values)

    def suggest(self, trial: Any) -> Any:
        """The value of this dimension in an Optuna trial (sampled, or the one it already holds)."""
        if self.kind == "choice":
            v = trial.suggest_categorical(self.key, self.optuna_choices())
            return self.decode(v)
        if self.kind == "int_uniform":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log_uniform")

    def decode(self, v: Any) -> Any:
        """A stored Optuna parameter back as the config value."""
        return json.loads(v) if self.encoded else v

    def grid(self) -> list[Any] | None:
        """Every value, where there are finitely many (what grid search enumerates); None for real ranges."""
        if self.kind == "choice":
            return self.optuna_choices()
        if self.kind == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        return None

    def candidates(self) -> list[Any]:
        """Values to check against the config schema: every choice, or both ends of a range."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int_uniform":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: list(self.values) if self.kind == "choice" else [self.low, self.high]}


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    source: str = "<space>"

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """key -> value for one trial."""
        return {d.key: d.suggest(trial) for d in self.dimensions}

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """An Optuna trial's stored params as config values (only the keys this space holds)."""
        return {d.key: d.decode(params[d.key]) for d in self.dimensions if d.key in params}

    def grid(self) -> dict[str, list[Any]]:
        """Optuna's GridSampler search space; ConfigError when a dimension is a real range."""
        real = [d.key for d in self.dimensions if d.grid() is None]
        if real:
            raise ConfigError(f"grid search needs finitely many values per key; {', '.join(real)} "
                              f"{'is a real range' if len(real) == 1 else 'are real ranges'}: list values instead, "
                              f"e.g. {real[0]}: {{choice: [1.0e-4, 3.0e-4]}}")
        return {d.key: d.grid() for d in self.dimensions}  # type: ignore[misc]

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def apply(self, base: RunConfig, params: dict[str, Any], fixed: dict[str, Any] | None = None) -> RunConfig:
        """The base configuration with one trial's values, then the study's ``fixed`` dotted keys (name,
        rounds …), set."""
        data = base.model_dump(mode="json")
        for key, value in {**params, **(fixed or {})}.items():
            data = set_dotted(data, key, value)
        return build_config(data, source=f"{self.source} trial")

    def to_dict(self) -> dict[str, Any]:
        return {d.key: d.to_dict() for d in self.dimensions}


def _parse_dimension(key: Any, spec: Any) -> tuple[Dimension | None, str | None]:
    """(dimension, None) or (None, the problem in one line)."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        return None, f"{key!r}: a key is a dotted config key, e.g. train.lr"
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        return None, (f"{key}: expected one of {{choice: [..]}}, {{uniform: [low, high]}}, {{log_uniform: [low, high]}}, "
                      f"{{int_uniform: [low, high]}} (got {spec!r})")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            return None, f"{key}: choice needs a non-empty list of values (got {args!r})"
        if len({json.dumps(v, sort_keys=True) for v in args}) != len(args):
            return None, f"{key}: choice lists a value twice ({args!r})"
        return Dimension(key, kind, values=tuple(args)), None
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)):
        return None, f"{key}: {kind} needs [low, high], two finite numbers (got {args!r})"
    low, high = args
    if kind == "int_uniform" and not all(isinstance(a, int) for a in args):
        return None, f"{key}: int_uniform needs two integers (got {args!r})"
    if low > high or (kind != "int_uniform" and low == high):
        return None, f"{key}: {kind} needs low < high (got {args!r})"
    if kind == "log_uniform" and low <= 0:
        return None, f"{key}: log_uniform needs 0 < low (got {args!r})"
    return Dimension(key, kind, low=low, high=high), None


def _reserved(key: str) -> str | None:
    for prefix, why in RESERVED.items():
        if key == prefix or key.startswith(prefix + "."):
            return f"{key}: cannot be searched: {why}"
    return None


def _schema_problems(dim: Dimension, base: dict[str, Any]) -> list[str]:
    """One line per way a value of ``dim`` does not fit the configuration schema (deduplicated)."""
    node: Any = base
    for p in dim.key.split("."):
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and node:
        first = next(iter(node))
        return [f"{dim.key}: names a section, not a setting; search one of its keys (e.g. {dim.key}.{first})"]
    out: list[str] = []
    for value in dim.candidates():
        try:
            build_config(set_dotted(base, dim.key, value))
        except ConfigError as e:
            for line in str(e).splitlines()[1:]:
                loc, _, msg = line.strip().partition(": ")
                text = f"{dim.key}: {msg}" if loc == dim.key else f"{dim.key}={value!r}: {loc}: {msg}"
                if "unknown key" in msg:  # the same for every value: say it once, without one of them
                    text = f"{loc}: {msg.split(' (got ')[0]}"
                if text not in out:
                    out.append(text)
    return out


def parse_space(source: Path | dict[str, Any], base: RunConfig) -> SearchSpace:
    """Read a search space (a YAML file or a mapping) and check every key and value against ``base``'s
    schema; ConfigError lists every problem, one line each."""
    name = str(source) if isinstance(source, Path) else "<space>"
    if isinstance(source, Path):
        if not source.is_file():
            raise ConfigError(f"search space file not found: {source}")
        try:
            source = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{name}: not valid YAML: {e}") from None
    if not isinstance(source, dict) or not source:
        raise ConfigError(f"{name}: a search space is a mapping of dotted config keys to ranges, e.g. "
                          f"train.lr: {{log_uniform: [1.0e-5, 1.0e-3]}}")
    base_data = base.model_dump(mode="json")
    dims: list[Dimension] = []
    problems: list[str] = []
    for key, spec in source.items():
        dim, problem = _parse_dimension(key, spec)
        if dim is None:
            problems.append(problem or f"{key}: invalid")
            continue
        if (why := _reserved(dim.key)) is not None:
            problems.append(why)
            continue
        if clash := [d.key for d in dims if d.key.startswith(dim.key + ".") or dim.key.startswith(d.key + ".")]:
            problems.append(f"{dim.key}: overlaps {clash[0]} (one key inside the other)")
            continue
        schema = _schema_problems(dim, base_data)
        problems += schema
        if not schema:
            dims.append(dim)
    if problems:
        raise ConfigError(f"search space {name}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))
    return SearchSpace(tuple(dims), name)
