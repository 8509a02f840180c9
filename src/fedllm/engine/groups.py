"""Grouped federations: one global adapter per group of clients, trained in one run.

Each group federates alone as a run of its own under ``runs/<name>/groups/<group>/`` (its config
names its clients in ``data.clients``, so it can be evaluated, reported or resumed like any run);
the base model is loaded once for all of them. The parent directory holds the resolved config,
``groups.json`` (the rule, each group's clients and each client's attribute) and a summary that
puts every client's held-out numbers from its own group's adapter side by side. A finished group is
reused and an interrupted one resumed, so ``fedllm train --resume runs/<name>`` continues the lot.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from typing import Any

from fedllm.config import RunConfig, dump_config
from fedllm.data.groups import describe_rule, resolve_groups
from fedllm.data.schema import DataError, FederatedDataset
from fedllm.engine.metrics import cost_summary, read_metrics
from fedllm.engine.progress import Reporter
from fedllm.engine.rundir import RunLock
from fedllm.engine.simulation import Evaluator, Session, Simulation
from fedllm.eval.heldout import ClientSums, pool
from fedllm.fairness import spread
from fedllm.jsonl import dumps, write_text_atomic
from fedllm.runs import CONFIG, GROUPS, GROUPS_DIR, METRICS, SUMMARY, RunError, load_federation, run_clients, started


def slug(name: str, taken: set[str]) -> str:
    """A run-directory name for a group (letters, digits and - _ . only), unique among ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.").lower() or "group"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out


class GroupedRun:
    def __init__(self, cfg: RunConfig, *, session: Session | None = None, dataset: FederatedDataset | None = None,
                 reporter: Reporter | None = None, evaluator: Callable[[], Evaluator] | None = None,
                 allow_config_change: bool = False) -> None:
        if not cfg.groups.enabled:
            raise ValueError("GroupedRun needs a config with groups.by or groups.mapping")
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.reporter = reporter or Reporter()
        self._session, self._dataset, self.evaluator = session, dataset, evaluator
        self.allow_config_change = allow_config_change

    def plan(self, dataset: FederatedDataset) -> dict[str, Any]:
        """groups.json's content: the rule, each group's directory and clients, each client's attribute."""
        g = self.cfg.groups
        ids = run_clients(self.cfg, dataset)
        try:
            groups, values = resolve_groups(dataset, ids, g.by, g.mapping, g.families)
        except DataError as e:
            raise RunError(str(e)) from None
        taken: set[str] = set()
        return {"rule": describe_rule(g.by, g.mapping), "by": g.by,
                "groups": {name: {"dir": slug(name, taken), "clients": members} for name, members in groups.items()},
                "attribute": values}

    def group_config(self, name: str, info: dict[str, Any]) -> RunConfig:
        """The run of one group: its clients only, at most as many per round as it has."""
        data = self.cfg.model_dump(mode="json")
        data.update(name=info["dir"], output_dir=str(self.run_dir / GROUPS_DIR), groups={})
        data["data"].update(clients=info["clients"], max_clients=None)
        data["fl"]["clients_per_round"] = min(self.cfg.fl.clients_per_round, len(info["clients"]))
        return RunConfig.model_validate(data)

    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir):
            saved = self.run_dir / GROUPS
            if not resume and saved.exists():
                raise RunError(f"{self.run_dir} already holds a grouped run; resume it with `fedllm train --resume "
                               f"{self.run_dir}` or choose another name (name=...)")
            try:
                dataset = self._dataset if self._dataset is not None else load_federation(cfg)
                plan = self.plan(dataset)
            except BaseException:
                if created:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
            if resume and saved.is_file() and json.loads(saved.read_text(encoding="utf-8"))["groups"] != plan["groups"]:
                raise RunError(f"{saved} lists other groups than this configuration and data give; resume with the "
                               f"data the run was started with, or start a new run (name=...)")
            write_text_atomic(self.run_dir / CONFIG, dump_config(cfg))
            write_text_atomic(saved, dumps(plan, indent=1))
            sizes = ", ".join(f"{n} ({len(i['clients'])})" for n, i in plan["groups"].items())
            self.reporter.info(f"{len(plan['groups'])} groups, {plan['rule']}: {sizes}")
            session = self._session or Session.create(cfg)
            summaries = {}
            for name, info in plan["groups"].items():
                summaries[name] = self._run_group(name, info, session, dataset)
            summary = self.combine(plan, summaries)
            write_text_atomic(self.run_dir / SUMMARY, dumps(summary, indent=1))
            return summary

    def _run_group(self, name: str, info: dict[str, Any], session: Session, dataset: FederatedDataset) -> dict[str, Any]:
        sub = self.group_config(name, info)
        if (sub.run_dir / SUMMARY).is_file():
            self.reporter.info(f"group {name}: finished earlier ({sub.run_dir})")
            return json.loads((sub.run_dir / SUMMARY).read_text(encoding="utf-8"))
        n = len(info["clients"])
        self.reporter.info(f"group {name}: {n} client{'s' if n != 1 else ''} -> {sub.run_dir}")
        sim = Simulation(sub, session=session, dataset=dataset, reporter=self.reporter,
                         evaluator=self.evaluator() if self.evaluator else None,
                         allow_config_change=self.allow_config_change)
        try:
            return sim.run(resume=started(sub.run_dir))
        except RunError as e:
            raise RunError(f"group {name}: {e}") from None

    def combine(self, plan: dict[str, Any], summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Every client's held-out numbers from its own group's adapter (global, and personal where
        the method keeps one), the groups' rows and the spread over clients."""
        per_client: dict[str, dict[str, Any]] = {}
        groups: dict[str, Any] = {}
        client_events: list[dict[str, Any]] = []
        for name, info in plan["groups"].items():
            events = read_metrics(self.run_dir / GROUPS_DIR / info["dir"] / METRICS)
            client_events += [e for e in events if e["event"] == "client"]
            last_eval = next((e for e in reversed(events) if e["event"] == "eval"), {})
            last_personal = next((e for e in reversed(events) if e["event"] == "personal"), {})
            for cid in info["clients"]:
                row = last_eval.get("per_client", {}).get(cid)
                if row is None:
                    continue
                per_client[cid] = {"group": name, "attribute": plan["attribute"][cid], "loss": row["loss"],
                                   "tokens": row["tokens"]}
                if (p := last_personal.get("per_client", {}).get(cid)) is not None:
                    per_client[cid]["personal"] = p["personal"]
            s = summaries[name]
            groups[name] = {"dir": info["dir"], "clients": len(info["clients"]),
                            "pooled_loss": s.get("final_eval", {}).get("pooled_loss"),
                            "mean_client_loss": s.get("final_eval", {}).get("mean_client_loss"),
                            "train_seconds": s.get("train_seconds", 0.0)}
        ppl = all(s.get("final_eval", {}).get("pooled_ppl") is not None for s in summaries.values())
        pooled = pool({c: ClientSums(r["loss"] * r["tokens"], r["tokens"]) for c, r in per_client.items()}, ppl)
        final = {"pooled_loss": pooled.pooled_loss, "pooled_ppl": pooled.pooled_ppl,
                 "mean_client_loss": pooled.mean_client_loss}
        losses = [r["loss"] for r in per_client.values()]
        personal = [r["personal"] for r in per_client.values() if "personal" in r]
        return {"name": self.cfg.name, "algorithm": self.cfg.fl.algorithm, "grouped": plan["rule"],
                "rounds": self.cfg.fl.rounds, "groups": groups, "final_eval": final,
                "fairness": {"global": spread(losses), **({"personal": spread(personal)} if personal else {})},
                "per_client": per_client,
                "cost": cost_summary(client_events),
                "peak_rss_mb": max((s.get("peak_rss_mb") or 0 for s in summaries.values()), default=None),
                "train_seconds": sum(s.get("train_seconds", 0.0) for s in summaries.values()),
                "eval_seconds": sum(s.get("eval_seconds", 0.0) for s in summaries.values())}
