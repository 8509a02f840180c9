"""`fedllm eval`: every requested metric on every target, one result table.

Targets sharing a base model load it once; each target's adapter is swapped into one LoRA slot (the
base model runs with the adapter disabled). Per metric and target, ``summary.json`` and
``items.jsonl`` land in ``<target out_dir>/<metric>/``; a finished metric whose settings match is
reused, and an unfinished one resumes from its per-item caches.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedllm.data.formatting import get_template
from fedllm.eval.context import EvalContext, EvalError
from fedllm.eval.generation import TextModel
from fedllm.eval.metrics import get_metric
from fedllm.eval.target import Target
from fedllm.eval.workers import Plan, available_memory, plan, run_in_workers
from fedllm.models.stored_weights import store_for_inference
from fedllm.hashing import stable_hash
from fedllm.jsonl import write_json_atomic, write_jsonl_atomic, write_text_atomic

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class EvalSettings:
    metrics: list[str]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> options; "*" applies to all
    data_dir: Path | None = None
    judge: Any = None  # fedllm.eval.judge.JudgeConfig
    seed: int = 0
    batch_size: int = 8
    redo: bool = False
    workers: str | int = 1  # worker processes ("auto": by the machine, `workers.plan`); never changes a number

    def metric_options(self, metric: str) -> dict[str, Any]:
        return {**self.options.get("*", {}), **self.options.get(metric, {})}


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]


def load_targets_model(targets: list[Target]) -> tuple[Any, Any]:
    """(BaseModel, adapter slot or None) for targets sharing a model; the slot exists only if some target has an adapter."""
    from fedllm.models.adapters import AdapterSlot, attach_adapter, peft_method
    from fedllm.models.loading import load_base_model
    from fedllm.models.offsite import lora_layers

    cfg = targets[0].cfg
    base = load_base_model(cfg.model)
    base.model.requires_grad_(False)  # evaluation never trains: frozen weights can be stored for inference
    slot = None
    if any(t.adapter_file is not None for t in targets):
        try:
            base.model = attach_adapter(base.model, cfg, layers=lora_layers(base.model, cfg.offsite))
        except ValueError as e:
            raise EvalError(f"{targets[0].label}: {e}") from None
        slot = AdapterSlot(base.model, method=peft_method(cfg))
    return base, slot


def select_target(target: Target, base: Any, slot: Any) -> Any:
    """Put the target's adapter in the slot; a context manager that disables it for the base model."""
    if target.adapter_file is None:
        return base.model.disable_adapter() if slot is not None else nullcontext()
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = {k: v.float() for k, v in load_file(str(target.adapter_file)).items()}
    except (SafetensorError, OSError) as e:
        raise EvalError(f"{target.adapter_file} is damaged and cannot be read ({e}); evaluate another "
                        f"checkpoint (<run>@round-N) or re-create the adapter") from None
    try:
        slot.load(slot.trainable(slot.from_saved(state)))
    except (KeyError, ValueError) as e:
        raise EvalError(f"{target.adapter_file}: adapter does not fit the model/LoRA config of {target.label}: {e}") from None
    return nullcontext()


class UnitRunner:
    """Runs (target index, metric name) units; loads a model group's base model when a unit of that group
    comes (keeping the last one), so targets sharing a model load it once. ``bars`` replaces the console's
    progress bars (a worker process forwards them to the parent)."""

    def __init__(self, targets: list[Target], settings: EvalSettings, console: Console | None = None,
                 bars: Callable[[str, int], Any] | None = None) -> None:
        self.targets, self.settings, self.bars = targets, settings, bars
        self.console = console or Console(stderr=True)
        self.judge_factory = None
        if settings.judge is not None:
            from fedllm.eval.judge import Judge

            self.judge_factory = lambda path: Judge(settings.judge, cache_path=path)
        self._loaded: tuple[str, Any, Any, Any, TextModel] | None = None  # model key, base, slot, template, model

    def _load(self, key: str) -> tuple[str, Any, Any, Any, TextModel]:
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # the previous group's model goes before the next one loads
            group = [t for t in self.targets if t.model_key() == key]
            base, slot = load_targets_model(group)
            store_for_inference(base.model, base.precision)  # the run's own precision (auto: measured)
            text_model = TextModel(base.model, base.tokenizer, base.precision, end_of_turn_ids(base.tokenizer))
            self._loaded = (key, base, slot, get_template(group[0].cfg.data.template, base.tokenizer), text_model)
        return self._loaded

    def __call__(self, unit: tuple[int, str]) -> dict[str, Any]:
        t, m = self.targets[unit[0]], get_metric(unit[1])
        _, base, slot, template, text_model = self._load(t.model_key())
        with select_target(t, base, slot):
            ctx = EvalContext(metric=m.name, target=t, model=text_model, template=template,
                              fingerprint=_fingerprint(t, text_model.precision.name), out_dir=t.out_dir / m.name,
                              options=self.settings.metric_options(m.name), data_dir=self.settings.data_dir,
                              seed=self.settings.seed, judge_factory=self.judge_factory,
                              batch_size=self.settings.batch_size, console=self.console, bars=self.bars)
            return _run_metric(ctx, m, self.settings)


def run_evaluation(targets: list[Target], settings: EvalSettings, console: Console | None = None,
                   workers: Plan | None = None) -> list[dict[str, Any]]:
    """Evaluate; returns one row per target: {"target", "kind", "out_dir", <columns>..., "_metrics": {...}}.
    Units left to compute run in one process or spread over worker processes (``workers``, else as
    ``evaluation_plan`` decides, with no more workers than units)."""
    console = console or Console(stderr=True)
    rows, units = _pending(targets, settings)
    p = workers or evaluation_plan(targets, settings)

    def record(unit: tuple[int, str], done: dict[str, Any]) -> None:
        rows[unit[0]]["_metrics"][unit[1]] = done
        rows[unit[0]].update(done["columns"])

    def describe(unit: tuple[int, str]) -> str:
        return f"{targets[unit[0]].label}: {unit[1]}"

    if p.workers > 1 and len(units) > 1:
        p = replace(p, workers=min(p.workers, len(units)))
        console.print(f"evaluating in {p.workers} processes of {p.threads} thread{'s' * (p.threads > 1)} "
                      f"({p.why}; --workers 1: one process)", highlight=False)
        run_in_workers(units, partial(UnitRunner, targets, settings), workers=p.workers, threads=p.threads,
                       kind=lambda u: u[1], describe=describe, on_done=record, console=console)
    else:
        run = UnitRunner(targets, settings, console)
        for unit in units:
            console.print(f"[bold]{escape(describe(unit))}[/]", highlight=False)
            record(unit, run(unit))
    return rows


def _pending(targets: list[Target], settings: EvalSettings) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """A row per target with its finished metrics read back, and the (target, metric) units left to compute
    (a model group's targets together)."""
    metrics = [get_metric(m) for m in settings.metrics]
    if settings.judge is None and (needing := [m.name for m in metrics if m.needs_judge]):
        raise EvalError(f"{', '.join(needing)} {'needs' if len(needing) == 1 else 'need'} an LLM judge: pass "
                        f"--judge-model (and --judge-base-url for a local or other OpenAI-compatible server)")
    rows = [{"target": t.label, "kind": t.kind, "out_dir": str(t.out_dir), "_metrics": {}} for t in targets]
    keys = list(dict.fromkeys(t.model_key() for t in targets))
    units = [(i, m.name) for key in keys for i, t in enumerate(targets) if t.model_key() == key
             for m in metrics if not _reuse(t, m, settings, rows[i])]
    return rows, units


def evaluation_plan(targets: list[Target], settings: EvalSettings) -> Plan:
    """How the evaluation will run here (worker processes and threads, ``workers.plan`` with this machine's
    facts), known before it starts, so that a judge started alongside can take the same share of the CPU."""
    import torch

    from fedllm.models.loading import weights_bytes
    from fedllm.models.precision import resolve_device

    try:
        cuda = any(resolve_device(t.cfg.model.device).type == "cuda" for t in targets)
    except ValueError:  # a device that is not there: loading the model says so, in one process
        return Plan(1, torch.get_num_threads(), "the model's device is not available")
    sizes = [weights_bytes(t.cfg.model) for t in {t.model_key(): t for t in targets}.values()]
    size = None if None in sizes else max(sizes, default=0)
    units = len(targets) * len(settings.metrics)  # at most: finished ones are read back, and fewer are capped
    return plan(settings.workers, units, torch.get_num_threads(), cuda, size, available_memory())


def _fingerprint(t: Target, precision: str) -> str:
    """What determines a target's outputs: part of every per-item cache key."""
    return stable_hash(t.cfg.model.name, t.cfg.model.revision, t.adapter_sha, t.cfg.data.template, precision, size=8)


def _settings_key(t: Target, m: Any, settings: EvalSettings) -> dict[str, Any]:
    """What a finished metric's numbers depend on, as it reads back from summary.json (JSON types)."""
    return json.loads(json.dumps({"adapter": t.adapter_sha, "model": t.cfg.model.name, "template": t.cfg.data.template,
            "precision": t.cfg.model.precision,
            "options": settings.metric_options(m.name), "seed": settings.seed,
            "data_dir": str(settings.data_dir) if settings.data_dir else None,
            "judge": settings.judge.key() if (settings.judge is not None and m.needs_judge) else None}, default=str))


def _reuse(t: Target, m: Any, settings: EvalSettings, row: dict[str, Any]) -> bool:
    """A finished metric with the same settings is read back instead of recomputed."""
    path = t.out_dir / m.name / "summary.json"
    if settings.redo or not path.is_file():
        return False
    try:
        done = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    if done.get("settings") != _settings_key(t, m, settings):
        return False
    row["_metrics"][m.name] = done
    row.update(done["columns"])
    return True


def _run_metric(ctx: EvalContext, metric: Any, settings: EvalSettings) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = metric.run(ctx)
    seconds = time.perf_counter() - t0
    if unused := ctx.unused_options():
        raise EvalError(f"unknown option(s) for {metric.name}: {', '.join(unused)}")
    gen_s = ctx.stats["generation_seconds"]
    done = {"metric": metric.name, "target": ctx.target.label, "columns": result.columns, "summary": result.summary,
            "settings": _settings_key(ctx.target, metric, settings),
            "cost": {"seconds": seconds, "generated_tokens": ctx.stats["generated_tokens"],
                     "generation_tokens_per_s": ctx.stats["generated_tokens"] / gen_s if gen_s else None},
            "items": len(result.items), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_jsonl_atomic(ctx.out_dir / "items.jsonl", result.items)
    write_json_atomic(ctx.out_dir / "summary.json", done)
    return done


# ---------------------------------------------------------------------- reporting
def result_columns(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    cols: list[str] = []
    for name in metrics:
        declared = list(get_metric(name).columns)
        found = [c for r in rows for c in r.get("_metrics", {}).get(name, {}).get("columns", {})]
        for c in declared + found:
            if c not in cols and any(c in r for r in rows):
                cols.append(c)
    return cols


def _fmt(column: str, v: Any) -> str:
    """Losses to 4 decimals, everything else (percentages, 1-10 scores, cosines) to 2; "-" when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.4f}" if "loss" in column else f"{v:.2f}"
    return str(v)


def excluded_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target/metric whose judge left items unscored (excluded from its mean)."""
    notes = []
    for r in rows:
        for name, m in r.get("_metrics", {}).items():
            if bad := m.get("summary", {}).get("excluded", 0):
                notes.append(f"{r['target']} {name}: {bad} judgment(s) unparsable or failed, excluded from the mean")
    return notes


def write_results(rows: list[dict[str, Any]], metrics: list[str], out_dir: Path) -> tuple[Path, Path]:
    cols = result_columns(rows, metrics)
    out_dir = Path(out_dir)
    table = [{"target": r["target"], "kind": r["kind"], **{c: r.get(c) for c in cols}, "out_dir": r["out_dir"]} for r in rows]
    write_json_atomic(out_dir / "results.json", {"metrics": metrics, "columns": cols, "rows": table,
                                                 "notes": excluded_notes(rows)})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["target", "kind", *cols, "out_dir"])
    w.writeheader()
    w.writerows(table)
    write_text_atomic(out_dir / "results.csv", buf.getvalue())
    return out_dir / "results.json", out_dir / "results.csv"


def print_results(rows: list[dict[str, Any]], metrics: list[str], console: Console, title: str = "fedllm eval") -> None:
    cols = result_columns(rows, metrics)
    table = Table(title=title)
    table.add_column("target")
    for c in cols:  # spaces let narrow terminals wrap a header instead of cutting it
        table.add_column(c.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(r["target"], *[_fmt(c, r.get(c)) for c in cols])
    console.print(table)
    for note in excluded_notes(rows):
        console.print(f"  note: {note}", highlight=False)
