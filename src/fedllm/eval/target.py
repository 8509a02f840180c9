"""What `fedllm eval` evaluates: a run's final adapter or a checkpoint round, a peft adapter
directory, or the base model alone — and where each one's evaluation files go."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from fedllm.config import RunConfig, build_config
from fedllm.data.sources.builds import file_sha256
from fedllm.models.adapters import TRAINABLE_FILE
from fedllm.runs import GROUPS, GROUPS_DIR, is_grouped, list_checkpoints, read_run_config


class TargetError(ValueError):
    """An evaluation target cannot be resolved."""


@dataclass
class Target:
    label: str  # row name in result tables
    kind: str  # "base" | "run" | "checkpoint" | "adapter"
    cfg: RunConfig  # model, LoRA, data and template used to load and prompt it
    adapter_file: Path | None  # safetensors with the adapter weights; None for the base model
    out_dir: Path  # per-metric files go to out_dir/<metric>/
    run_dir: Path | None = None

    @cached_property
    def adapter_sha(self) -> str:
        return "base" if self.adapter_file is None else file_sha256(self.adapter_file)[:16]

    def model_key(self) -> str:
        """Targets with equal keys share one loaded base model (and LoRA slot)."""
        off = self.cfg.offsite  # offsite-tuning puts the adapter on the first and last k layers only
        return (self.cfg.model.model_dump_json() + self.cfg.lora.model_dump_json() + self.cfg.peft.model_dump_json()
                + (f"|offsite-k={off.adapter_layers}" if off.enabled else ""))


_ROUND = re.compile(r"^round-(\d+)$")


def _run_config(run_dir: Path) -> RunConfig:
    from fedllm.runs import RunError

    try:
        return read_run_config(run_dir)
    except RunError as e:
        raise TargetError(str(e)) from None


#: peft's saved adapter types -> the ``peft.method`` that evaluates them (computed prompt-learning forms
#: load as the plain method they equal: P-tuning's MLP output is a prompt, a projected prefix a prefix)
PEFT_TYPES = {"LORA": "lora", "IA3": "ia3", "PROMPT_TUNING": "prompt", "P_TUNING": "prompt", "PREFIX_TUNING": "prefix"}


def _peft_from_dir(adapter_dir: Path) -> dict[str, dict[str, object]]:
    """The ``lora`` and ``peft`` config sections that rebuild a saved peft adapter's model."""
    cfg_path = adapter_dir / "adapter_config.json"
    try:
        pc = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TargetError(f"{cfg_path}: cannot read the peft adapter config ({e})") from None
    kind = pc.get("peft_type", "LORA")
    if kind not in PEFT_TYPES:
        raise TargetError(f"{cfg_path}: peft_type {kind!r} is not one fedllm evaluates ({', '.join(PEFT_TYPES)})")
    targets = pc.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, (list, set)) else [targets]
    if kind == "LORA":
        return {"lora": {"r": pc["r"], "alpha": pc.get("lora_alpha", pc["r"]), "dropout": pc.get("lora_dropout", 0.0),
                         "target_modules": targets},
                "peft": {"method": "dora" if pc.get("use_dora") else "lora"}}
    if kind == "IA3":
        ff = pc.get("feedforward_modules") or []
        return {"peft": {"method": "ia3", "ia3_target_modules": targets,
                         "ia3_feedforward_modules": sorted(ff) if isinstance(ff, (list, set)) else [ff]}}
    return {"peft": {"method": PEFT_TYPES[kind], "num_virtual_tokens": pc["num_virtual_tokens"]}}


def resolve_target(spec: str, *, base_cfg: RunConfig | None = None, model: str | None = None,
                   out_root: Path = Path("runs/eval")) -> Target:
    """``spec``: "base", a run directory, a run's ``checkpoints/round-N`` or ``adapter`` directory,
    ``<run>@round-N``, or any peft LoRA adapter directory."""
    if spec == "base":
        cfg = base_cfg or build_config({})
        if model:
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": model})})
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.model.name).name) or "model"
        return Target("base", "base", cfg, None, Path(out_root) / f"base-{slug}")
    path_s, _, at_round = spec.partition("@")
    path = Path(path_s)
    if not path.exists():
        raise TargetError(f"evaluation target {spec!r}: no such run or adapter directory (or use 'base')")
    if at_round:
        if not _ROUND.match(at_round):
            raise TargetError(f"evaluation target {spec!r}: expected <run>@round-N")
        path = path / "checkpoints" / at_round
    if (path / "config.yaml").is_file():  # a run directory: its final adapter (in trainable form, if peft's differs)
        adapter = path / "adapter" / TRAINABLE_FILE
        if not adapter.is_file():
            adapter = path / "adapter" / "adapter_model.safetensors"
        if not adapter.is_file():
            raise TargetError(f"{path}: the run has no final adapter yet (unfinished?); evaluate a checkpoint "
                              f"with {path}@round-N (have: {', '.join(p.name for p in list_checkpoints(path / 'checkpoints')) or 'none'})")
        cfg = _run_config(path)
        if cfg.lora.hetero == "flora":  # FLoRA saved the merged ΔW as a LoRA of its own rank (scaling 1)
            cfg = cfg.model_copy(update={"lora": cfg.lora.model_validate(_peft_from_dir(path / "adapter")["lora"])})
        return Target(cfg.name, "run", cfg, adapter, path / "eval" / "final", run_dir=path)
    m = _ROUND.match(path.name)
    if m and (path.parent.parent / "config.yaml").is_file():
        run_dir = path.parent.parent
        adapter = path / "adapter.safetensors"
        if not adapter.is_file():
            raise TargetError(f"{path}: checkpoint has no adapter.safetensors")
        cfg = _run_config(run_dir)
        if cfg.lora.hetero == "flora":
            raise TargetError(f"{path}: a FLoRA checkpoint's model is the base plus the merged ΔW of its server state, "
                              f"not its adapter.safetensors; evaluate the run's final adapter ({run_dir})")
        return Target(f"{cfg.name}@{path.name}", "checkpoint", cfg, adapter, run_dir / "eval" / path.name, run_dir=run_dir)
    if (path / "adapter_config.json").is_file():
        adapter = path / "adapter_model.safetensors"
        if not adapter.is_file():
            raise TargetError(f"{path}: no adapter_model.safetensors")
        if (path.parent / "config.yaml").is_file():  # <run>/adapter
            return resolve_target(str(path.parent), base_cfg=base_cfg, model=model, out_root=out_root)
        base = base_cfg or build_config({})
        sections = _peft_from_dir(path)
        name = model or json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path") or base.model.name
        cfg = base.model_copy(update={"model": base.model.model_copy(update={"name": name}),
                                      "lora": base.lora.model_validate(sections.get("lora", {})),
                                      "peft": base.peft.model_validate(sections["peft"])})
        return Target(path.name, "adapter", cfg, adapter, path / "eval", run_dir=None)
    raise TargetError(f"{path}: neither a run directory (config.yaml), a checkpoint round nor a peft adapter "
                      f"directory (adapter_config.json)")


def resolve_targets(specs: list[str], *, model: str | None = None, out_root: Path = Path("runs/eval")) -> list[Target]:
    """Resolve every spec; "base" takes its model, data and template from the first run given (so a
    table compares like with like), else the defaults with ``model``."""
    specs = [g for s in specs for g in _expand_grouped(s)]
    resolved: dict[int, Target] = {}
    for i, s in enumerate(specs):
        if s != "base":
            resolved[i] = resolve_target(s, model=model, out_root=out_root)
    first = next((t.cfg for t in resolved.values()), None)
    out = []
    for i, s in enumerate(specs):
        out.append(resolved[i] if i in resolved else resolve_target("base", base_cfg=first, model=model, out_root=out_root))
    labels = [t.label for t in out]
    for t in out:
        if labels.count(t.label) > 1:
            t.label = f"{t.label} ({t.out_dir})"
    return out


def _expand_grouped(spec: str) -> list[str]:
    """A grouped run (one run per group of clients) stands for its groups' runs; anything else for itself."""
    path_s, sep, at_round = spec.partition("@")
    if spec == "base" or not is_grouped(Path(path_s)):
        return [spec]
    plan = json.loads((Path(path_s) / GROUPS).read_text(encoding="utf-8"))
    return [str(Path(path_s) / GROUPS_DIR / g["dir"]) + sep + at_round for g in plan["groups"].values()]
