"""The deployment commands' work: ``fedllm serve`` (a SuperLink here, the run submitted to it),
``fedllm node`` (a SuperNode holding some clients) and ``fedllm launch`` (both, on one machine)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedllm.config import RunConfig, dump_config
from fedllm.engine.flower.launch import (QUIET_ENV, TLS, Cluster, LaunchError, _bin, flower_env, free_port, node_argv,
                                        submit, write_app, write_flower_home)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Security:
    """TLS certificates (a ``fedllm certs`` directory) and whether SuperNodes must be registered."""

    tls_dir: Path | None = None
    auth: bool = False

    def tls(self) -> TLS | None:
        return TLS.from_dir(self.tls_dir) if self.tls_dir is not None else None

    def node_keys(self) -> list[Path]:
        if not self.auth:
            return []
        if self.tls_dir is None:
            raise LaunchError("SuperNode authentication needs TLS: pass --tls DIR (made by `fedllm certs DIR --nodes N`)")
        keys = sorted(self.tls_dir.resolve().glob("node-*.key"), key=lambda p: int(p.stem.split("-")[1]))
        if not keys:
            raise LaunchError(f"--auth: no node key pairs in {self.tls_dir} (make them with `fedllm certs DIR --nodes N`)")
        return keys


    def public_keys(self) -> list[Path]:
        """The node public keys to register (node-<i>.pub of the --tls directory)."""
        if not self.node_keys() or self.tls_dir is None:
            return []
        return sorted(self.tls_dir.resolve().glob("node-*.pub"))


def workdir_of(cfg: RunConfig) -> Path:
    """Where a deployment keeps its Flower state and logs: beside the run directory."""
    return Path(cfg.output_dir).resolve() / f"{cfg.name}.flower"


def start_link(cluster: Cluster, sec: Security, host: str, port: int, say: Callable[[str], None],
               netns: str | None = None) -> Path:
    """A SuperLink on host:port (inside network namespace ``netns`` if given), with TLS and registered
    node keys as asked; returns the FLWR_HOME whose default connection is it."""
    tls = sec.tls()
    if sec.auth:
        sec.node_keys()  # fail before starting anything
    argv_extra = ["--enable-supernode-auth"] if sec.auth else []
    cluster.superlink(port, tls, host=host, extra=argv_extra, netns=netns)
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    home = write_flower_home(cluster.workdir / "cli-home", f"{connect}:{port}", tls)
    for pub in sec.public_keys():
        argv = [_bin("flwr"), "supernode", "register", str(pub), "fedllm"]
        r = subprocess.run(["ip", "netns", "exec", netns, *argv] if netns else argv, env=cluster.env(home),
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0 and "already in use" not in r.stdout + r.stderr:  # registered before: keep it
            words = [ln.strip(" │╭╰─") for ln in ANSI.sub("", r.stdout + r.stderr).splitlines()]
            raise LaunchError(f"registering {pub} failed: {' '.join(w for w in words if w)[-300:]}")
    say(f"SuperLink on {host}:{port} ({'TLS' if tls else 'insecure: no TLS'}"
        f"{', registered nodes only' if sec.auth else ''}); logs in {cluster.workdir}")
    return home


def run_app(cluster: Cluster, cfg: RunConfig, home: Path, resume: str, say: Callable[[str], None]) -> int:
    """Submit the run with ``flwr run`` and follow its log until it ends; the run's exit status (130 on
    Ctrl-C, after which the caller stops every process)."""
    try:
        return _follow(cluster, cfg, home, resume, say)
    except KeyboardInterrupt:
        say(f"interrupted: stopping every process; the same command resumes {cfg.run_dir} from its last checkpoint")
        return 130


def _follow(cluster: Cluster, cfg: RunConfig, home: Path, resume: str, say: Callable[[str], None]) -> int:
    app = write_app(cluster.workdir / "app", dump_config(cfg), Path(cfg.output_dir), resume)
    log = cluster.workdir / "flwr-run.log"
    shown = log.stat().st_size if log.exists() else 0  # the log is appended to: show this run's part
    proc = submit(cluster, app, home)
    seen: list[str] = []
    while True:
        done = proc.poll() is not None
        with open(log, "rb") as f:
            f.seek(shown)
            chunk = f.read()
        if chunk:
            shown += len(chunk)
            text = chunk.decode(errors="replace")
            seen.append(text)
            for line in ANSI.sub("", text).splitlines():
                if line.strip() and "warnings.warn" not in line and "Warning:" not in line:
                    say(line)
        if done:
            break
        time.sleep(0.5)
    out = "".join(seen)
    if "done: " in out and proc.returncode == 0:
        return 0
    if not any(w in out for w in ("run stopped:", "run failed:")):
        say(f"the run ended without finishing (see {cluster.workdir}/superlink.log)")
    return 1


def launch(cfg: RunConfig, nodes: int, sec: Security, resume: str, say: Callable[[str], None]) -> int:
    """A SuperLink and ``nodes`` SuperNodes (node i holds partition i of the federation) on this machine."""
    if nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    data = yaml.safe_load(dump_config(cfg))
    data.setdefault("deploy", {})["min_nodes"] = max(cfg.deploy.min_nodes, nodes)
    cfg = RunConfig.model_validate(data)
    tls = sec.tls()
    keys = sec.node_keys()
    if sec.auth and len(keys) < nodes:
        raise LaunchError(f"--auth with --nodes {nodes}: only {len(keys)} node keys in {sec.tls_dir}")
    work = workdir_of(cfg)
    for stale in work.glob("superlink.db*"):  # everything restarts: no node is "online" from a killed launch
        stale.unlink()
    # the nodes share this machine's cores: oversubscribed OpenMP threads spin against each other
    threads = max(1, (os.cpu_count() or 1) // nodes)
    with Cluster(work) as cluster:
        port = free_port()
        home = start_link(cluster, sec, "127.0.0.1", port, say)
        for i in range(nodes):
            nc: dict[str, object] = {"partition-id": i, "num-partitions": nodes,
                                     "state-dir": str(cluster.workdir / f"node-{i}-state")}
            p = cluster.supernode(f"node-{i}", f"127.0.0.1:{port}", free_port(), nc, tls, keys[i] if keys else None,
                                  threads=threads)
            say(f"SuperNode node-{i} (pid {p.pid}) holds partition {i}/{nodes}, {threads} threads; "
                f"log {cluster.logs[f'node-{i}']}")
        return run_app(cluster, cfg, home, resume, say)


def serve(cfg: RunConfig, host: str, port: int, sec: Security, resume: str, say: Callable[[str], None]) -> int:
    """A SuperLink here and the run submitted to it; SuperNodes join from anywhere (``fedllm node``)."""
    with Cluster(workdir_of(cfg)) as cluster:
        home = start_link(cluster, sec, host, port, say)
        say(f"waiting for {cfg.deploy.min_nodes} SuperNode(s) (deploy.min_nodes) for up to {cfg.deploy.node_wait:g}s")
        return run_app(cluster, cfg, home, resume, say)


def node(superlink: str, node_config: dict[str, object], tls_ca: Path | None, auth_key: Path | None, port: int) -> int:
    """A SuperNode in the foreground (Ctrl-C stops it)."""
    if tls_ca is not None and not tls_ca.is_file():
        raise LaunchError(f"--root-certificates {tls_ca}: no such file")
    if auth_key is not None and not auth_key.is_file():
        raise LaunchError(f"--auth-key {auth_key}: no such file")
    try:
        return subprocess.call(node_argv(superlink, node_config, tls_ca, auth_key, port), env=flower_env())
    except KeyboardInterrupt:
        return 130


__all__ = ["Security", "launch", "node", "serve", "simulate_ray", "start_link"]


def simulate_ray(cfg: RunConfig, nodes: int, client_cpus: float, client_gpus: float, resume: str,
                 say: Callable[[str], None]) -> int:
    """The run on Flower's Simulation Runtime (Ray): ``nodes`` virtual SuperNodes (node i holds partition
    i), their ClientApps in Ray actors that run in parallel as the resources allow, each keeping the
    base model loaded across rounds. The server side is the same ServerApp as in a deployment."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.app import Context
    from flwr.simulation import run_simulation

    from fedllm.engine.flower.app import client_app
    from fedllm.engine.flower.serve import run_server

    if nodes < 1:
        raise LaunchError("--nodes must be at least 1")
    data = yaml.safe_load(dump_config(cfg))
    data.setdefault("deploy", {})["min_nodes"] = max(cfg.deploy.min_nodes, nodes)
    cfg = RunConfig.model_validate(data)
    text = dump_config(cfg)
    result: dict[str, object] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result["summary"] = run_server(grid, {"config": text, "output-dir": str(Path(cfg.output_dir).resolve()),
                                              "resume": resume})

    os.environ.update(QUIET_ENV)
    backend = {"client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus},
               "init_args": {"logging_level": "ERROR", "log_to_driver": True}}
    say(f"Flower simulation (Ray): {nodes} virtual SuperNodes, {client_cpus:g} CPU and {client_gpus:g} GPU per ClientApp")
    run_simulation(server, client_app, num_supernodes=nodes, backend_name="ray", backend_config=backend)
    return 0 if result.get("summary") is not None else 1
