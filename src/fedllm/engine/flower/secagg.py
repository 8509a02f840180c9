"""Secure aggregation (SecAgg+) of a round: the server learns the weighted mean of the sampled clients'
updates and nothing about any one of them.

Flower runs the protocol: ``SecAggPlusWorkflow`` on the server, ``secaggplus_mod`` on every node.
fedllm fits its round into it. Each node trains its sampled clients (fedllm's own client round, from
the instructions in its FitIns) and answers with their weighted mean ``m`` and total weight ``W``.
SecAgg+ masks ``W·m`` and ``W``, so the server can unmask only ``Σ W·m / Σ W``: the weighted mean
over all sampled clients, as the ``mean`` aggregator computes it. Per-client counts and metrics
(loss, steps) travel in the clear; updates do not.

SecAgg+ quantizes: each node's ``(W/max_weight)·m`` is clipped to ±``clipping_range`` and mapped to
``quantization_range`` levels. The server sets ``max_weight`` to the round's total weight, so the
clip applies to the weighted update itself. A node reports how many entries it clipped.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from fedllm.engine.messages import Reply
from fedllm.fl.base import ClientUpdate
from fedllm.fl.state import State

KEY = "fedllm"


def weight(update: ClientUpdate, weighting: str) -> int:
    return int(update.num_samples) if weighting == "samples" else 1


# ---------------------------------------------------------------------------- node side
def node_fit(node: Any, config: dict[str, Any], clip: float, max_weight: float) -> tuple[list[np.ndarray], int, dict[str, Any]]:
    """Train this node's sampled clients; their weighted mean (arrays in key order), total weight and
    the clients' counts and metrics."""
    header = json.loads(str(config[KEY]))
    updates: list[ClientUpdate] = []
    infos = []
    for i, cid in enumerate(header["clients"]):
        reply = Reply.from_bytes(node.train(bytes(config[f"blob{i}"]), cid, int(header["round"])))
        u = reply.update
        updates.append(u)
        metrics = {k: v for k, v in reply.metrics.items() if k != "step_log"}
        infos.append({"client_id": u.client_id, "num_samples": u.num_samples, "num_seen": u.num_seen,
                      "num_steps": u.num_steps, "lr": u.lr, "metrics": metrics})
    weights = [weight(u, header["weighting"]) for u in updates]
    total = sum(weights)
    keys = header["keys"]
    mean = {k: sum(w * u.delta[k].double() for w, u in zip(weights, updates)) / total for k in keys}
    arrays = [mean[k].to(torch.float32).numpy() for k in keys]
    scaled_max = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0) * total / max_weight
    clipped = sum(int((np.abs(a) * total / max_weight > clip).sum()) for a in arrays)
    return arrays, total, {"clients": infos, "clipped": clipped, "max_scaled": scaled_max}


# ---------------------------------------------------------------------------- server side
def mean_state(arrays: list[np.ndarray], keys: list[str], like: State) -> State:
    """The unmasked aggregate as a State (the global adapter's dtypes)."""
    return {k: torch.from_numpy(np.asarray(a)).to(like[k].dtype).reshape(like[k].shape) for k, a in zip(keys, arrays)}


class SecureRound:
    """One round's SecAgg+ exchange as Flower's legacy Strategy sees it: FitIns per node carrying the
    instructions of its sampled clients; ``aggregate_fit`` receives the unmasked mean."""

    def __init__(self, grid: Any, fits: dict[int, Any]) -> None:
        from flwr.server.strategy import Strategy

        self.grid, self.fits = grid, fits
        self.results: list[tuple[int, Any]] = []  # (node id, FitRes with the aggregate as parameters)
        self.failures: list[Any] = []
        outer = self

        class _Shim(Strategy):  # what SecAggPlusWorkflow asks of a strategy, and nothing more
            def initialize_parameters(self, client_manager: Any) -> Any:
                return None

            def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
                from flwr.server.compat.grid_client_proxy import GridClientProxy

                run_id = outer.grid.run.run_id
                return [(GridClientProxy(nid, outer.grid, run_id), fitins) for nid, fitins in outer.fits.items()]

            def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
                outer.results = [(proxy.node_id, res) for proxy, res in results]
                outer.failures = list(failures)
                return (results[0][1].parameters if results else None), {}

            def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list:
                return []

            def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple:
                return None, {}

            def evaluate(self, server_round: int, parameters: Any) -> None:
                return None

        self.strategy = _Shim()


def masked_bytes(arrays: list[np.ndarray]) -> int:
    """What a node's masked vector weighs: int64 entries plus numpy's header per array."""
    return sum(8 * a.size + 128 for a in arrays)


class SecAggTransport:
    """The Flower transport of a SecAgg+ round: yields each client's counts and metrics (no update) and
    leaves the unmasked weighted mean in ``secure_mean``."""

    def __init__(self, fleet: Any, wire: Any, spec: Any, weighting: str, weights: dict[str, int]) -> None:
        self.fleet, self.wire, self.spec, self.weighting, self.weights = fleet, wire, spec, weighting, weights
        self.secure_mean: State | None = None

    def run(self, instructions: Any) -> Any:
        from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
        from flwr.common import FitIns, Parameters
        from flwr.server import ServerConfig
        from flwr.server.compat import LegacyContext
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        from fedllm.engine.transport import Exchange

        fleet, spec = self.fleet, self.spec
        fleet.refresh()
        self.secure_mean = None
        by_node: dict[int, list[Any]] = {}
        adapter: State | None = None
        for ins in instructions:
            node = fleet.node_of.get(ins.client_id)
            if node is None:
                yield Exchange(ins.client_id, None, 0, 0, "no connected node holds this client")
                continue
            by_node.setdefault(node, []).append(ins)
            adapter = ins.adapter
        if len(by_node) < 3:
            for group in by_node.values():
                for ins in group:
                    yield Exchange(ins.client_id, None, 0, 0, f"SecAgg+ needs at least 3 nodes with sampled clients; "
                                                              f"this round has {len(by_node)}")
            return
        keys = sorted(adapter)
        r = by_node[next(iter(by_node))][0].round
        max_weight = float(sum(self.weights.get(ins.client_id, 1) if self.weighting == "samples" else 1
                               for g in by_node.values() for ins in g))
        fits, down = {}, {}
        for node, group in by_node.items():
            config: dict[str, Any] = {KEY: json.dumps({"clients": [i.client_id for i in group], "round": r, "keys": keys,
                                                       "weighting": self.weighting, "max_weight": max_weight,
                                                       "clip": spec.clipping_range, "run": fleet.run_config})}
            for j, ins in enumerate(group):
                blob = ins.to_bytes(self.wire)
                config[f"blob{j}"] = blob
                down[ins.client_id] = len(blob)
            fits[node] = FitIns(Parameters(tensors=[], tensor_type=""), config)
        shim = SecureRound(fleet.grid, fits)
        ctx = LegacyContext(Context(fleet.grid.run.run_id, 0, {}, RecordDict(), {}), config=ServerConfig(num_rounds=1),
                            strategy=shim.strategy)
        ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: r + 1})
        ctx.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        workflow = SecAggPlusWorkflow(spec.num_shares, spec.reconstruction_threshold, max_weight=max_weight,
                                      clipping_range=spec.clipping_range, quantization_range=spec.quantization_range,
                                      timeout=fleet.cfg.deploy.round_timeout)
        workflow(fleet.grid, ctx)
        answered: set[str] = set()
        if shim.results:
            from flwr.common import parameters_to_ndarrays

            arrays = parameters_to_ndarrays(shim.results[0][1].parameters)
            self.secure_mean = mean_state(arrays, keys, adapter)
            for node, res in shim.results:
                info = json.loads(str(res.metrics[KEY]))
                if info["clipped"]:
                    fleet.reporter.warn(f"round {r + 1}: node {node} clipped {info['clipped']} entries of its weighted "
                                        f"update to deploy.secagg.clipping_range={spec.clipping_range:g} (largest "
                                        f"{info['max_scaled']:.3g}); raise it")
                up = masked_bytes(arrays) // max(len(info["clients"]), 1)
                for c in info["clients"]:
                    u = ClientUpdate(c["client_id"], {}, c["num_samples"], c["num_seen"], c["num_steps"], c["lr"], {})
                    metrics = {**c["metrics"], "node": node, "secagg_clipped": info["clipped"]}
                    answered.add(c["client_id"])
                    yield Exchange(c["client_id"], Reply(r, u, metrics), down[c["client_id"]], up)
        why = "its node dropped out of the secure aggregation" if shim.results else \
            "secure aggregation halted (too few nodes completed the protocol; see the ServerApp log)"
        for group in by_node.values():
            for ins in group:
                if ins.client_id not in answered:
                    yield Exchange(ins.client_id, None, down.get(ins.client_id, 0), 0, why)
