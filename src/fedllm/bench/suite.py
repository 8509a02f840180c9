"""Benchmark suites: a YAML grid of runs (methods × datasets × seeds × options) and the metrics to
evaluate on each, expanded into cells with fully resolved run configurations.

A suite file::

    name: cpu
    description: ...
    config: quickstart            # a built-in config (quickstart, quickstart-dpo), a path beside the suite, or omitted
    set: {fl.rounds: 8}           # dotted keys applied to every cell
    axes:                         # the grid is the product of the axes, in this order
      method:                     # label -> the dotted keys that label sets
        fedavg: {fl.algorithm: fedavg}
        local: {fl.algorithm: local}
      seed: {key: seed, values: [0, 1, 2]}   # shorthand: one key, its values as labels
    exclude: [{method: local, seed: 2}]     # cells left out (every named axis must match)
    metrics: [heldout]            # heldout: the run's own final evaluation; others: `fedllm eval` metrics
    eval: {options: {mmlu.max_items: 57}}   # --set options, data_dir, batch_size, judge settings for `fedllm eval`
    compare: {method: fedavg}     # the reference arm of the significance tests
    report_by: language           # the report's bars: held-out loss per value of this client attribute

Nothing here trains; ``fedllm bench SUITE --dry-run`` prints what the cells resolve to.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedllm.config import (ConfigError, RunConfig, apply_settings, build_config, config_fingerprint,
                           read_yaml_mapping)

BUILTIN_CONFIGS = {"quickstart": "quickstart.yaml", "quickstart-dpo": "quickstart-dpo.yaml"}
RUN_METRIC = "heldout"  # read from the run itself; every other metric is a `fedllm eval` metric


class SuiteError(ConfigError):
    """A suite file that cannot be used; the message names the file and what is wrong."""


class Axis(BaseModel):
    """One dimension of the grid: labelled settings (label -> dotted keys), in order."""

    model_config = ConfigDict(extra="forbid")
    arms: dict[str, dict[str, Any]]


class SuiteEval(BaseModel):
    """How the `fedllm eval` metrics of a suite run (ignored when it has only ``heldout``)."""

    model_config = ConfigDict(extra="forbid")
    options: dict[str, Any] = Field(default_factory=dict, description="metric options: metric.option -> value")
    data_dir: Optional[str] = Field(None, description="benchmark files (else $FEDLLM_EVAL_DATA or the hub)")
    batch_size: int = Field(8, ge=1)
    judge_model: Optional[str] = None
    judge_base_url: Optional[str] = None
    judge_local: Optional[str] = None


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    paper: Optional[str] = Field(None, description="the table or figure the suite reproduces")
    needs: Optional[str] = Field(None, description="what running it takes (a GPU, hub access, hours)")
    config: Optional[str] = None
    set: dict[str, Any] = Field(default_factory=dict)
    axes: dict[str, Union[dict[str, Any], list[Any]]]
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: [RUN_METRIC])
    eval: SuiteEval = Field(default_factory=SuiteEval)
    compare: Optional[dict[str, Any]] = None
    report_by: Optional[str] = Field(None, description="a client attribute (e.g. language): the report adds "
                                                       "held-out loss per value of it")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("letters, digits and - _ . only (it names directories)")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one metric (heldout: the runs' own held-out loss)")
        return list(dict.fromkeys(v))


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its label per axis, the settings it adds, and its resolved configuration."""

    id: str  # its labels joined, a number after its axis name ("fedavg_seed0"): names the run directory
    labels: dict[str, str]  # axis -> label
    settings: dict[str, Any]  # the dotted keys this cell sets beyond the suite's own
    cfg: RunConfig

    @property
    def config_hash(self) -> str:
        return config_fingerprint(self.cfg)


@dataclass(frozen=True)
class Suite:
    spec: SuiteSpec
    source: str  # where it was read from
    out: Path  # the suite's directory: runs/, results.jsonl, tables
    axes: dict[str, Axis]
    cells: list[Cell]

    @property
    def eval_metrics(self) -> list[str]:
        return [m for m in self.spec.metrics if m != RUN_METRIC]

    def reference(self) -> tuple[str, str] | None:
        """(axis, label) of the arm every other is tested against."""
        if not self.spec.compare:
            return None
        (axis, label), = self.spec.compare.items()
        return axis, str(label)


SNAPSHOT = "suite.yaml"  # the suite as run, in its directory, so `fedllm report DIR` needs nothing else


def save_snapshot(suite: Suite) -> Path:
    """Write the suite's spec into its directory (a relative ``config`` path made absolute)."""
    from fedllm.jsonl import write_text_atomic

    data = suite.spec.model_dump(mode="json", exclude_defaults=True)
    data["name"] = suite.spec.name
    folder = Path(suite.source).parent
    if suite.spec.config and suite.spec.config not in BUILTIN_CONFIGS and not Path(suite.spec.config).is_absolute():
        data["config"] = str((folder / suite.spec.config).resolve())
    path = suite.out / SNAPSHOT
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def builtin_suites() -> dict[str, Path]:
    """Suites shipped with fedllm: name -> file."""
    folder = resources.files("fedllm.bench").joinpath("suites")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def _axis(name: str, raw: dict[str, Any] | list[Any], where: str) -> Axis:
    if isinstance(raw, dict) and set(raw) == {"key", "values"}:
        key, values = raw["key"], raw["values"]
        if not isinstance(key, str) or not isinstance(values, list) or not values:
            raise SuiteError(f"{where}: axes.{name}: `key` is a dotted config key and `values` a non-empty list")
        arms = {_label(v): {key: v} for v in values}
        if len(arms) != len(values):
            raise SuiteError(f"{where}: axes.{name}: values repeat")
        return Axis(arms=arms)
    if isinstance(raw, list):
        raise SuiteError(f"{where}: axes.{name}: a list needs a key: write {{key: <dotted key>, values: [...]}}")
    if not raw:
        raise SuiteError(f"{where}: axes.{name} has no values")
    arms = {}
    for label, settings in raw.items():
        if settings is not None and not isinstance(settings, dict):
            raise SuiteError(f"{where}: axes.{name}.{label}: expected dotted keys (e.g. {{fl.algorithm: fedavg}}), "
                             f"got {settings!r}")
        arms[_label(label)] = dict(settings or {})
    return Axis(arms=arms)


def _label(v: Any) -> str:
    text = v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", text):
        raise SuiteError(f"label {text!r}: letters, digits and - _ . + only (labels name run directories)")
    return text


def _is_arm(axes: dict[str, Axis], axis: str, value: Any) -> bool:
    try:
        return axis in axes and _label(value) in axes[axis].arms
    except SuiteError:
        return False


def _base_config(spec: SuiteSpec, folder: Path, where: str) -> dict[str, Any]:
    if spec.config is None:
        return {}
    if spec.config in BUILTIN_CONFIGS:
        path = Path(str(resources.files("fedllm.bench").joinpath(BUILTIN_CONFIGS[spec.config])))
    else:
        path = (folder / spec.config) if not Path(spec.config).is_absolute() else Path(spec.config)
        if not path.is_file():
            raise SuiteError(f"{where}: config {spec.config!r} is neither a built-in config "
                             f"({', '.join(BUILTIN_CONFIGS)}) nor a file ({path})")
    return read_yaml_mapping(path, "of sections", SuiteError)


def load_suite(name_or_path: str | Path, output_dir: Path | None = None) -> Suite:
    """A suite by built-in name or file, expanded into cells whose runs go under ``output_dir/runs``
    (default: ``runs/bench/<suite name>``)."""
    path = Path(name_or_path)
    shipped = builtin_suites()
    if not path.is_file():
        if str(name_or_path) not in shipped:
            raise SuiteError(f"no suite {str(name_or_path)!r}: neither a file nor a built-in suite "
                             f"({', '.join(sorted(shipped))})")
        path = shipped[str(name_or_path)]
    where = str(path)
    raw = read_yaml_mapping(path, "(name, axes, metrics, ...)", SuiteError)
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise SuiteError(f"{where}: {loc or '<root>'}: {msg}") from None
    if not spec.axes:
        raise SuiteError(f"{where}: axes: name at least one axis (e.g. seed: {{key: seed, values: [0, 1, 2]}})")
    try:
        axes = {name: _axis(name, a, where) for name, a in spec.axes.items()}
    except SuiteError as e:
        raise SuiteError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    for rule in spec.exclude:
        for axis, label in rule.items():
            if not _is_arm(axes, axis, label):
                raise SuiteError(f"{where}: exclude {rule}: {axis}={label} is not a label of the grid")
    if spec.compare is not None:
        if len(spec.compare) != 1:
            raise SuiteError(f"{where}: compare names one axis and its reference label, e.g. {{method: fedavg}}")
        (axis, label), = spec.compare.items()
        if not _is_arm(axes, axis, label):
            raise SuiteError(f"{where}: compare: {axis}={label} is not a label of the grid")
    output_dir = Path(output_dir) if output_dir is not None else Path("runs/bench") / spec.name
    base = _base_config(spec, path.parent, where)
    common = apply_settings(base, spec.set)
    cells = []
    for combo in itertools.product(*(a.arms.items() for a in axes.values())):
        labels = {axis: label for axis, (label, _) in zip(axes, combo)}
        if any(all(labels[a] == _label(v) for a, v in rule.items()) for rule in spec.exclude):
            continue
        settings: dict[str, Any] = {}
        for _, arm in combo:
            settings.update(arm)
        cell_id = "_".join(label if not label[0].isdigit() else f"{axis}{label}" for axis, label in labels.items())
        data = apply_settings(common, {**settings, "name": cell_id, "output_dir": str(output_dir / "runs")})
        try:
            cfg = build_config(data, source=f"{where}, cell {cell_id}")
        except ConfigError as e:
            raise SuiteError(str(e)) from None
        cells.append(Cell(cell_id, labels, settings, cfg))
    if not cells:
        raise SuiteError(f"{where}: exclude leaves no cell to run")
    if len({c.id for c in cells}) != len(cells):
        raise SuiteError(f"{where}: two cells would share a run directory name; use labels without '_'")
    return Suite(spec, where, output_dir, axes, cells)


def runs_as_suite(run_dirs: list[Path], out: Path) -> Suite:
    """Finished runs as a one-axis suite (``run``: each run's name), so one report serves both."""
    from fedllm.runs import read_run_config

    cells, arms = [], {}
    for d in run_dirs:
        cfg = read_run_config(d)
        label = _label(re.sub(r"[^A-Za-z0-9_.+-]+", "-", d.name).strip("-") or "run")
        if label in arms:
            label = f"{label}-{len(arms)}"
        arms[label] = {}
        cells.append(Cell(label, {"run": label}, {}, cfg))
    spec = SuiteSpec(name="runs", description=f"{len(cells)} runs", axes={"run": arms})
    return Suite(spec, "", out, {"run": Axis(arms=arms)}, cells)
