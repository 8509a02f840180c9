"""A run as files: the layout of ``runs/<name>/`` and how to read one back (its config, checkpoints and
federation). The engine writes runs; evaluation, reports and benchmarks read them through this module."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fedllm.config import ConfigError, RunConfig, load_config
from fedllm.data.schema import FederatedDataset

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
CLIENT_STATE = "client_state"
LOCK = ".lock"
GROUPS = "groups.json"  # a grouped run: its groups; each group's run is under GROUPS_DIR/<group>/
GROUPS_DIR = "groups"

_ROUND = re.compile(r"^round-(\d+)$")


class RunError(RuntimeError):
    """A run cannot start, resume or be read as asked; the message says why and what to do."""


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved config of an existing run, pointed at where the run directory is now."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no {CONFIG})")
    try:
        # quoted, so a directory named like a number (runs/hpo/trials/000) stays a string
        return load_config(path, [f"output_dir={json.dumps(str(run_dir.parent))}", f"name={json.dumps(run_dir.name)}"])
    except ConfigError as e:
        raise RunError(f"{path} cannot be read back: {e}") from None


def started(run_dir: Path) -> bool:
    """Whether a run directory holds a run begun earlier (so training it again means resuming it)."""
    return (Path(run_dir) / CHECKPOINTS).is_dir() or (Path(run_dir) / METRICS).is_file()


def is_grouped(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a grouped run (one run per group of clients)."""
    return (Path(run_dir) / GROUPS).is_file()


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints (``round-N`` with its state.json), oldest first; temporary ones are ignored."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir()
             if (m := _ROUND.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def load_federation(cfg: RunConfig) -> FederatedDataset:
    """The federation a run config names (built into the cache first if it is a registered source)."""
    from fedllm.data.sources import load_dataset

    return load_dataset(cfg.data.dataset, test_fraction=cfg.data.test_fraction, seed=cfg.seed, **cfg.data.build)


def run_clients(cfg: RunConfig, dataset: FederatedDataset) -> list[str]:
    """The clients a run federates: ``data.clients`` or all (in file order), the first ``data.max_clients``."""
    ids = list(dataset.client_ids)
    if cfg.data.clients is not None:
        held = set(ids)
        unknown = [c for c in cfg.data.clients if c not in held]
        if unknown:
            raise RunError(f"data.clients names {len(unknown)} client(s) {cfg.data.dataset!r} does not hold (e.g. "
                           f"{unknown[:3]}; its clients include {ids[:3]})")
        ids = list(dict.fromkeys(cfg.data.clients))
    ids = ids[: cfg.data.max_clients or None]
    if not ids:
        raise RunError(f"dataset {cfg.data.dataset!r} has no clients")
    return ids
