"""The sandbox for model-written code: outcomes, limits, process-group cleanup, no network, no secrets."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fedllm.eval.sandbox import OUTPUT_TAIL_CHARS, run_untrusted


def _gone(pid: int, within_s: float = 3.0) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _userns_available() -> bool | None:
    """Whether this machine lets an unprivileged process create user+network namespaces (None: unknown)."""
    if shutil.which("unshare") is None:
        return None
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def test_passing_program_reports_stdout():
    result = run_untrusted("print(sum(range(10)))")
    assert result.status == "passed" and result.passed
    assert result.returncode == 0
    assert result.stdout == "45\n"
    assert result.stderr == ""
    assert 0 < result.seconds < 5


def test_failing_assert_is_failed_with_traceback():
    result = run_untrusted("x = 2\nassert x == 3, 'wrong'\n")
    assert result.status == "failed"
    assert result.returncode == 1
    assert "AssertionError: wrong" in result.stderr


def test_syntax_error_is_failed():
    result = run_untrusted("def f(:\n    pass\n")
    assert result.status == "failed"
    assert "SyntaxError" in result.stderr


def test_infinite_loop_is_killed_at_timeout():
    result = run_untrusted("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout"
    assert 1.0 <= result.seconds < 1.0 + 3


def test_memory_bomb_is_stopped_quickly():
    result = run_untrusted("x = bytearray(4 * 1024 ** 3)\nprint('allocated')\n", memory_mb=512)
    assert result.status == "memory"
    assert "allocated" not in result.stdout
    assert result.seconds < 5


@pytest.mark.parametrize("code", [
    "import os\nos.fork()",
    "import os\nos.system('true')",
    "import os\nos.kill(1, 0)",
    "import subprocess\nsubprocess.run(['true'])",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    "import os\nos.posix_spawn('/bin/true', ['true'], {})",
    "import ctypes\nctypes.CDLL(None).fork()",
])
def test_guard_blocks_process_creation_and_signals(code):
    result = run_untrusted(code)
    assert result.status == "failed"
    assert "disabled in sandbox" in result.stderr


def test_process_group_is_killed_after_the_program_exits():
    # without the guard the program can start a child; it returns at once, leaving `sleep 30` behind
    code = "import subprocess\np = subprocess.Popen(['sleep', '30'])\nprint(p.pid, flush=True)\n"
    result = run_untrusted(code, _guard=False)
    assert result.status == "passed", result.stderr
    assert _gone(int(result.stdout))


def test_process_group_is_killed_on_timeout():
    code = "import subprocess\np = subprocess.Popen(['sleep', '30'])\nprint(p.pid, flush=True)\nwhile True:\n    pass\n"
    result = run_untrusted(code, timeout_s=1.0, _guard=False)
    assert result.status == "timeout"
    assert _gone(int(result.stdout))


def _connect_code(port: int) -> str:
    return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"


def test_no_network_connection_to_a_listening_socket():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_untrusted(_connect_code(port))
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):  # nobody ever connected
            server.accept()
    assert result.status == "failed"
    assert "network disabled in sandbox" in result.stderr


def test_network_namespace_alone_blocks_connections():
    available = _userns_available()
    if available is None:
        pytest.skip("no `unshare` binary to probe user namespaces")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = run_untrusted(_connect_code(port), _guard=False)
        server.settimeout(0.2)
        if available:
            with pytest.raises(TimeoutError):
                server.accept()
    assert result.network_isolated is available
    if available:
        assert result.status == "failed"
        assert "Network is unreachable" in result.stderr or "Errno" in result.stderr


def test_files_land_in_a_temp_dir_that_is_removed(tmp_path):
    code = textwrap.dedent("""
        import os
        with open("out.txt", "w") as fh:
            fh.write("data")
        print(os.getcwd())
        print(os.environ["HOME"], os.environ["TMPDIR"])
    """)
    result = run_untrusted(code)
    assert result.status == "passed", result.stderr
    cwd, env_line = result.stdout.splitlines()
    assert Path(cwd).is_relative_to(Path(tempfile.gettempdir()).resolve())
    assert env_line == f"{cwd} {cwd}"
    assert not Path(cwd).exists()


def test_writes_outside_the_sandbox_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_untrusted(f"open({str(target)!r}, 'w').write('x')")
    assert result.status == "failed"
    assert "outside the sandbox directory" in result.stderr
    assert not target.exists()


def test_child_environment_has_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    result = run_untrusted("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    assert result.status == "passed", result.stderr
    env = json.loads(result.stdout)
    assert "OPENAI_API_KEY" not in env and "HTTPS_PROXY" not in env
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LC_CTYPE"}  # LC_CTYPE: Python's own C-locale coercion


def test_stdin_is_empty():
    result = run_untrusted("input()")
    assert result.status == "failed"
    assert "EOFError" in result.stderr


def test_output_is_truncated_to_its_tail():
    result = run_untrusted("print('x' * 5000 + 'END')")
    assert len(result.stdout) == OUTPUT_TAIL_CHARS
    assert result.stdout.endswith("xEND\n")


def test_missing_interpreter_is_an_error():
    result = run_untrusted("print(1)", python="/nonexistent/python3")
    assert result.status == "error"
    assert result.returncode is None


def test_stdlib_used_by_humaneval_tests_works_under_the_guard():
    code = ("import math, itertools, collections, re, hashlib, string, random, functools, heapq, fractions\n"
            "print(hashlib.md5(b'Hello world').hexdigest(), math.comb(5, 2))\n")
    result = run_untrusted(code)
    assert result.status == "passed", result.stderr
    assert result.stdout == "3e25960a79dbc69b674cd4ec67a72c62 10\n"


def test_concurrent_runs_from_threads_do_not_mix():
    codes = [f"import time\ntime.sleep(0.2)\nprint({i} * {i})\n" for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run_untrusted, codes))
    assert [r.status for r in results] == ["passed"] * 6
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)]


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError, match="timeout_s"):
        run_untrusted("pass", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_untrusted("pass", memory_mb=0)
