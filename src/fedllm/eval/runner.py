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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedllm.data.formatting import get_template
from fedllm.eval.context import EvalContext, EvalError
from fedllm.models.stored_weights import store_for_inference
from fedllm.eval.generation import TextModel
from fedllm.eval.metrics import get_metric
from fedllm.eval.target import Target
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


def run_evaluation(targets: list[Target], settings: EvalSettings, console: Console | None = None) -> list[dict[str, Any]]:
    """Evaluate; returns one row per target: {"target", "kind", "out_dir", <columns>..., "_metrics": {...}}."""
    console = console or Console(stderr=True)
    metrics = [get_metric(m) for m in settings.metrics]
    if settings.judge is None and (needing := [m.name for m in metrics if m.needs_judge]):
        raise EvalError(f"{', '.join(needing)} {'needs' if len(needing) == 1 else 'need'} an LLM judge: pass "
                        f"--judge-model (and --judge-base-url for a local or other OpenAI-compatible server)")
    judge_factory = None
    if settings.judge is not None:
        from fedllm.eval.judge import Judge

        judge_factory = lambda path: Judge(settings.judge, cache_path=path)  # noqa: E731
    rows = {id(t): {"target": t.label, "kind": t.kind, "out_dir": str(t.out_dir), "_metrics": {}} for t in targets}
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.model_key(), []).append(t)
    for group in groups.values():
        pending = [(t, m) for t in group for m in metrics if not _reuse(t, m, settings, rows[id(t)])]
        if not pending:
            continue
        base, slot = load_targets_model(group)
        template = get_template(group[0].cfg.data.template, base.tokenizer)
        precision = base.precision  # the run's own (auto: measured), decoding as fast as fp32 or faster
        store_for_inference(base.model, precision)
        text_model = TextModel(base.model, base.tokenizer, precision, end_of_turn_ids(base.tokenizer))
        for t in group:
            todo = [m for tt, m in pending if tt is t]
            if not todo:
                continue
            with select_target(t, base, slot):
                fp = _fingerprint(t, precision.name)
                for m in todo:
                    ctx = EvalContext(metric=m.name, target=t, model=text_model, template=template, fingerprint=fp,
                                      out_dir=t.out_dir / m.name, options=settings.metric_options(m.name),
                                      data_dir=settings.data_dir, seed=settings.seed, judge_factory=judge_factory,
                                      batch_size=settings.batch_size, console=console)
                    console.print(f"[bold]{t.label}[/]: {m.name}", highlight=False)
                    rows[id(t)]["_metrics"][m.name] = _run_metric(ctx, m, settings)
                    rows[id(t)].update(rows[id(t)]["_metrics"][m.name]["columns"])
    return [rows[id(t)] for t in targets]


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
