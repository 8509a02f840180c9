"""Processes of a Flower deployment, started and stopped for the user: a SuperLink, SuperNodes and the
run submitted with ``flwr run``. Every process gets its own session, so stopping kills its whole
group (Flower's SuperExec and app subprocesses included)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import tomli_w

from fedllm.runs import RunError

FEDERATION = "fedllm"
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


class LaunchError(RunError):
    """A deployment process could not be started (one line saying which and why)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def flower_env(home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process: quiet, and finding this environment's executables first
    (Flower starts flower-superexec, flwr-serverapp… by name)."""
    env = {**os.environ, **QUIET_ENV}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def _bin(name: str) -> str:
    """A Flower executable of this environment (next to this Python), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise LaunchError(f"{name} not found: install Flower with `pip install 'fedllm[flower]'`")
    return found


@dataclass
class TLS:
    """Certificates for a SuperLink (``fedllm certs`` makes them)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, d: Path) -> TLS:
        d = d.resolve()  # processes run in their own working directory
        tls = cls(d / "ca.crt", d / "server.pem", d / "server.key")
        missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.is_file()]
        if missing:
            raise LaunchError(f"TLS files missing: {', '.join(missing)} (make them with `fedllm certs {d}`)")
        return tls


def write_app(dest: Path, config_text: str, output_dir: Path, resume: str = "auto") -> Path:
    """The Flower App directory ``flwr run`` ships: fedllm's ServerApp and ClientApp, installed here,
    with the run's config as the app's run config."""
    dest.mkdir(parents=True, exist_ok=True)
    from fedllm import __version__ as version

    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedllm-run", "version": "1.0.0", "description": f"a fedllm {version} run",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedllm",
            "components": {"serverapp": "fedllm.engine.flower.app:server_app",
                           "clientapp": "fedllm.engine.flower.app:client_app"},
            "config": {"config": config_text, "output-dir": str(output_dir.resolve()), "resume": resume},
        }}},
    }
    (dest / "pyproject.toml").write_text(tomli_w.dumps(pyproject))
    return dest


def write_flower_home(home: Path, address: str, tls: TLS | None) -> Path:
    """A Flower configuration (``FLWR_HOME``) whose default connection is this SuperLink."""
    home.mkdir(parents=True, exist_ok=True)
    conn: dict[str, object] = {"address": address}
    if tls is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(tls.ca.resolve())
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": FEDERATION, FEDERATION: conn}}))
    return home


@dataclass
class Cluster:
    """Processes started for a deployment; ``stop()`` (or leaving the ``with``) ends every one."""

    workdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    _files: list[IO] = field(default_factory=list)

    def env(self, home: Path | None = None) -> dict[str, str]:
        return flower_env(home or self.workdir / "flwr-home")  # FLWR_HOME: apps, keys, logs

    def start(self, name: str, argv: list[str], home: Path | None = None, log: bool = True,
              netns: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a process in its own session (``netns``: inside that network namespace)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f"{name}.log"
        out = open(path, "ab") if log else subprocess.DEVNULL
        if log:
            self._files.append(out)
            self.logs[name] = path
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**self.env(home), **(env or {})}, cwd=self.workdir,
                             start_new_session=True)
        self.procs[name] = p
        return p

    def superlink(self, port: int, tls: TLS | None, host: str = "127.0.0.1",
                  extra: list[str] | None = None, netns: str | None = None) -> subprocess.Popen:
        """Flower's SuperLink: Fleet, Control and ServerAppIo APIs on one HTTP(S) port; state in a database
        beside the logs; app dependencies are never installed at run time (they are this environment's)."""
        argv = [_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation",
                "--database", str(self.workdir / "superlink.db")]
        argv += _tls_args(tls) + (extra or [])
        p = self.start("superlink", argv, netns=netns)
        wait_port(host if host != "0.0.0.0" else "127.0.0.1", port, p, self.logs["superlink"], netns=netns)
        return p

    def supernode(self, name: str, superlink: str, port: int, node_config: dict[str, object], tls: TLS | None,
                  auth_key: Path | None = None, netns: str | None = None, threads: int | None = None) -> subprocess.Popen:
        """A SuperNode; ``threads`` caps the threads its ClientApps compute with (nodes sharing a machine)."""
        env = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else None
        return self.start(name, node_argv(superlink, node_config, tls.ca if tls else None, auth_key, port), netns=netns,
                          env=env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        for name, p in self.procs.items():
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            try:  # the whole group: SuperExec and app processes outlive their parent otherwise
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for f in self._files:
            f.close()
        self._files.clear()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_argv(superlink: str, node_config: dict[str, object], tls_ca: Path | None, auth_key: Path | None,
              port: int) -> list[str]:
    argv = [_bin("flower-supernode"), "--superlink", superlink, "--port", str(port),
            "--node-config", " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())]
    argv += ["--root-certificates", str(tls_ca)] if tls_ca else ["--insecure"]
    if auth_key is not None:
        argv += ["--auth-supernode-private-key", str(auth_key)]
    return argv


def _tls_args(tls: TLS | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    return ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]


def _toml_value(v: object) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v)


def wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 60,
              netns: str | None = None) -> None:
    """Until ``proc`` accepts connections on host:port (seen from inside ``netns`` if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"{_prog(proc)} exited with {proc.returncode}: {tail(log)}")
        if netns is not None:
            probe = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                                    f"import socket; socket.create_connection(({host!r}, {port}), 0.5)"],
                                   capture_output=True)
            if probe.returncode == 0:
                return
        else:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((host, port)) == 0:
                    return
        time.sleep(0.2)
    raise LaunchError(f"{_prog(proc)} did not open {host}:{port} within {timeout:g}s: {tail(log)}")


def _prog(proc: subprocess.Popen) -> str:
    args = list(proc.args)
    return Path(args[4] if args[0] == "ip" else args[0]).name  # ip netns exec NS PROG …


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def submit(cluster: Cluster, app: Path, home: Path, stream: bool = True, netns: str | None = None) -> subprocess.Popen:
    """``flwr run`` of the app on the SuperLink that ``home`` names; with ``stream`` its output follows the run."""
    argv = [_bin("flwr"), "run", str(app), FEDERATION] + (["--stream"] if stream else [])
    return cluster.start("flwr-run", argv, home=home, netns=netns)
