"""The Flower App: ``server_app`` runs fedllm's server loop, ``client_app`` answers its requests with
fedllm's own client code. Both read the run from Flower's run config:

* ``config``: the fedllm run config as YAML text (the same file ``fedllm train`` takes);
* ``output-dir``: where the server writes the run directory (on the server's machine);
* ``resume``: ``auto`` (resume when the run directory holds a checkpoint), ``true`` or ``false``.

A node's ``--node-config`` says which clients it holds (see ``fedllm.engine.flower.node.NodeData``).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedllm.engine.flower import records as R

server_app = ServerApp()
client_app = ClientApp(mods=[secaggplus_mod])  # the mod acts only on SecAgg+'s "train" messages


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedllm.engine.flower.serve import run_server

    run_server(grid, dict(context.run_config))


def _serve(msg: Message, context: Context, handler: Any) -> Message:
    """Run a node-side request; a problem the node can name is one line back to the server."""
    from fedllm.quiet import quiet_libraries

    quiet_libraries()
    from fedllm.config import ConfigError
    from fedllm.engine.flower.node import NodeError
    from fedllm.engine.client import ClientError
    from fedllm.runs import RunError

    try:
        header, blob = R.unpack(msg.content)
        node = _node(str(header["run"]["config"]), json.dumps(dict(context.node_config), sort_keys=True))
        out_header, out_blob = handler(node, header, blob)
    except (ValueError, ConfigError, NodeError, ClientError, RunError) as e:
        return R.reply(msg, {"error": f"{type(e).__name__}: {e}".splitlines()[0]})
    return R.reply(msg, out_header, out_blob)


@functools.lru_cache(maxsize=2)
def _node(config_text: str, node_config: str) -> Any:
    """The node of a run, kept while its process lives: a Flower simulation worker (a Ray actor) loads
    the base model once for all its rounds; a deployed SuperNode starts a process per message anyway."""
    import yaml

    from fedllm.config import build_config
    from fedllm.engine.flower.node import Node, NodeData

    cfg = build_config(yaml.safe_load(config_text), source="the run config sent by the server")
    return Node(cfg, NodeData.from_node_config(json.loads(node_config)))


@client_app.query("fedllm_census")
def census(msg: Message, context: Context) -> Message:
    return _serve(msg, context, lambda node, h, b: (node.census(), b""))


@client_app.train("fedllm_round")
def train(msg: Message, context: Context) -> Message:
    def run(node: Any, h: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        out = node.train(blob, h["client"], int(h["round"]))
        return {"client": h["client"], "pid": os.getpid()}, out

    return _serve(msg, context, run)


@client_app.evaluate("fedllm_heldout")
def evaluate(msg: Message, context: Context) -> Message:
    return _serve(msg, context, lambda node, h, b: (node.evaluate(b, h["clients"], h["cap"], h["batch_size"],
                                                                  h.get("personal"), h.get("round", 0)), b""))


@client_app.train()
def secure_round(msg: Message, context: Context) -> Message:
    """A round under SecAgg+ (``deploy.secagg``): train this node's sampled clients and answer with their
    weighted mean and total weight, which ``secaggplus_mod`` masks before it leaves."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from fedllm.engine.flower.secagg import KEY, node_fit

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    header = json.loads(str(fitins.config[KEY]))
    node = _node(str(header["run"]["config"]), json.dumps(dict(context.node_config), sort_keys=True))
    arrays, total, info = node_fit(node, fitins.config, float(header["clip"]), float(header["max_weight"]))
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), total, {KEY: json.dumps(info)})
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
