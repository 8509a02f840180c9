"""Run untrusted, model-written Python in a throw-away child process with hard limits and no network.

Design: the parent starts ``python -I -B -c <launcher> <config>`` in a fresh temporary directory, with a
minimal environment, stdin from /dev/null, stdout/stderr to files and its own session (process group).
The launcher is a tiny trusted program that runs *inside the child* before any untrusted code:

1. lowers its resource limits (address space, CPU seconds, file size, no core dumps);
2. sets ``PR_SET_NO_NEW_PRIVS`` and tries ``unshare(CLONE_NEWUSER | CLONE_NEWNET)``: a fresh network
   namespace has only a downed loopback interface, so no connection can be made to anything;
3. reports over a private pipe whether the namespace was obtained, then closes the pipe;
4. installs the guard (defence in depth, always on): an audit hook (PEP 578, cannot be removed from
   Python) refusing sockets, process creation, signals, ctypes and file changes outside the sandbox's
   work directory, plus plain patches of ``socket``/``os``/``subprocess`` that raise early;
5. compiles and executes the untrusted file as ``__main__``.

Applying limits in the child instead of in a ``preexec_fn`` keeps the parent free of code that runs
between fork and exec, which is not thread-safe; ``subprocess`` alone is, so ``run_untrusted`` may be
called from many threads at once. ``RLIMIT_NPROC`` is deliberately not set: it counts every process of
the user, so it would make unrelated work fail; process creation is refused by the guard instead.

After the program ends (or at the wall-clock timeout) the whole process group is SIGKILLed while the
leader is still an unreaped zombie (so its pid cannot have been reused), and the directory is removed.
The guard is not a complete jail (a determined program could still read the user's files); the
namespace and the limits are the real boundary, the guard narrows what is left where namespaces are
unavailable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OUTPUT_TAIL_CHARS = 2000
FILE_SIZE_LIMIT_BYTES = 10 * 1024 * 1024  # also caps stdout/stderr, which go to files
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
PROGRAM_NAME = "program.py"

STATUSES = ("passed", "failed", "timeout", "memory", "error")

# Runs inside the child before the untrusted program (see module docstring). Kept self-contained: it is
# passed with ``-c`` and reads its settings as JSON from argv[1].
_LAUNCHER = r'''
import json, os, sys

def _limit(resource, res, soft, hard=None):
    hard = soft if hard is None else hard
    _, cur_hard = resource.getrlimit(res)
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.setrlimit(res, (soft, hard))

def _setup(cfg):
    import resource
    _limit(resource, resource.RLIMIT_AS, cfg["memory_bytes"])
    _limit(resource, resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)
    _limit(resource, resource.RLIMIT_FSIZE, cfg["fsize_bytes"])
    _limit(resource, resource.RLIMIT_CORE, 0)
    isolated = False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries gain nothing
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(0x10000000 | 0x40000000) == 0:  # CLONE_NEWUSER | CLONE_NEWNET
            isolated = True
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                try:  # keep the same ids inside the namespace (cosmetic; access checks use the real ids)
                    with open(f"/proc/self/{name}", "w") as fh:
                        fh.write(text)
                except OSError:
                    pass
    except Exception:
        isolated = False
    for mod in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[mod]
    return isolated

def _guard(work):
    import builtins, socket, subprocess, _posixsubprocess
    work = os.path.realpath(work)
    realpath, fspath, fsdecode, isabs = os.path.realpath, os.fspath, os.fsdecode, os.path.isabs
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked = frozenset((
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "subprocess.Popen", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "ctypes.dlopen",
        "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.cdata/buffer",
        "ctypes.string_at", "ctypes.wstring_at", "ctypes.PyObj_FromPtr", "sys.remote_exec",
    ))
    # event -> (indexes of path arguments that must lie in the work dir, index of dir_fd or None)
    path_events = {
        "open": ((0,), None), "os.mkdir": ((0,), 2), "os.remove": ((0,), 1), "os.rmdir": ((0,), 1),
        "os.rename": ((0, 1), 2), "os.link": ((0, 1), 2), "os.symlink": ((1,), 2), "os.truncate": ((0,), None),
        "os.chmod": ((0,), 2), "os.chown": ((0,), 3), "os.utime": ((0,), 3), "os.setxattr": ((0,), None),
        "os.removexattr": ((0,), None), "shutil.rmtree": ((0,), None), "shutil.copyfile": ((1,), None),
        "shutil.copymode": ((1,), None), "shutil.copystat": ((1,), None),
    }

    def inside(path):
        if isinstance(path, int):
            return False
        path = realpath(fsdecode(fspath(path)))
        return path == work or path.startswith(work + os.sep) or path == os.devnull

    def hook(event, args):
        if event.startswith("socket.") and event != "socket.gethostname":
            raise OSError("network disabled in sandbox")
        if event in blocked:
            raise PermissionError(f"{event} is disabled in sandbox")
        spec = path_events.get(event)
        if spec is None:
            return
        if event == "open":
            path, mode, flags = args
            writes = bool((flags or 0) & write_flags) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if not writes or isinstance(path, int):  # reading, or wrapping an already open descriptor
                return
        indexes, dir_fd_at = spec
        if dir_fd_at is not None and args[dir_fd_at] not in (None, -1):
            raise PermissionError(f"{event} with dir_fd is disabled in sandbox")
        for i in indexes:
            if not inside(args[i]):
                raise PermissionError(f"{event} outside the sandbox directory is disabled: {args[i]!r}")

    def refuse(what, exc=PermissionError):
        message = f"network disabled in sandbox ({what})" if exc is OSError else f"{what} is disabled in sandbox"
        def refused(*args, **kwargs):
            raise exc(message)
        return refused

    class NoSocket(socket.socket):  # a subclass, so modules that subclass socket.socket still import
        def __init__(self, *args, **kwargs):
            raise OSError("network disabled in sandbox")

    class NoPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            raise PermissionError("subprocess.Popen is disabled in sandbox")

    socket.socket = NoSocket
    for name in ("create_connection", "getaddrinfo", "socketpair", "fromfd", "create_server"):
        setattr(socket, name, refuse(f"socket.{name}", OSError))
    subprocess.Popen = NoPopen
    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
    for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
                 "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "setsid", "setpgid"):
        if hasattr(os, name):
            setattr(os, name, refuse(f"os.{name}"))
    sys.addaudithook(hook)

def _main():
    cfg = json.loads(sys.argv[1])
    isolated = _setup(cfg)
    os.write(cfg["report_fd"], b"ok 1\n" if isolated else b"ok 0\n")
    os.close(cfg["report_fd"])
    program = cfg["program"]
    with open(program, "rb") as fh:
        source = fh.read()
    if cfg["guard"]:
        _guard(cfg["work"])
    import types
    main = types.ModuleType("__main__")
    main.__file__ = program
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv = [program]
    code = compile(source, program, "exec")
    del cfg, source
    exec(code, main.__dict__)

_main()
'''


@dataclass
class ExecResult:
    """Outcome of one sandboxed run; ``status`` is one of STATUSES."""

    status: str  # passed (exit 0) | failed | timeout | memory | error (could not start)
    returncode: int | None
    seconds: float
    stdout: str  # last OUTPUT_TAIL_CHARS characters
    stderr: str
    network_isolated: bool  # the child obtained its own (empty) network namespace

    @property
    def passed(self) -> bool:
        """True when the program exited with status 0."""
        return self.status == "passed"


def _tail(path: Path, chars: int = OUTPUT_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a (possibly large or missing) output file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * chars))
            return fh.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _wait_exited(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` has exited without reaping it (so its pid and group id stay reserved).

    Returns False if the deadline passed first.
    """
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped elsewhere
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_report(fd: int) -> str:
    """What the launcher wrote on the report pipe (empty if it died before setting up)."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 64):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("ascii", errors="replace")


def _status(returncode: int, timed_out: bool, stderr: str) -> str:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # SIGKILL we did not send comes from the CPU hard limit (soft + 1 s, reached when the program
        # ignores SIGXCPU); with RLIMIT_AS in place the kernel's OOM killer is not the likely sender.
        return "timeout"
    if returncode == 0:
        return "passed"
    if "MemoryError" in stderr:
        return "memory"
    return "failed"


def run_untrusted(code: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, python: str = sys.executable,
                  _guard: bool = True) -> ExecResult:
    """Run ``code`` as a Python program in a sandboxed child and report how it ended.

    Limits: wall clock ``timeout_s``, CPU ceil(timeout_s)+1 s, address space ``memory_mb``, files 10 MB.
    ``_guard=False`` (tests only) skips the in-process guard to exercise the outer limits alone.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb}")
    root = Path(tempfile.mkdtemp(prefix="fedllm-sandbox-"))
    work, io_dir = root / "work", root / "io"  # the program may write in work/ only; its output goes to io/
    read_fd = write_fd = -1
    try:
        work.mkdir()
        io_dir.mkdir()
        program = work / PROGRAM_NAME
        program.write_text(code, encoding="utf-8")
        read_fd, write_fd = os.pipe()
        cfg = {"memory_bytes": int(memory_mb) * 1024 * 1024, "cpu_seconds": math.ceil(timeout_s) + 1,
               "fsize_bytes": FILE_SIZE_LIMIT_BYTES, "report_fd": write_fd, "program": str(program),
               "work": str(work), "guard": bool(_guard)}
        env = {"PATH": SAFE_PATH, "HOME": str(work), "TMPDIR": str(work)}
        argv = [python, "-I", "-B", "-c", _LAUNCHER, json.dumps(cfg)]
        start = time.monotonic()
        with open(io_dir / "stdout", "wb") as out, open(io_dir / "stderr", "wb") as err:
            try:
                proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, pass_fds=(write_fd,), close_fds=True)
            except OSError as exc:
                return ExecResult("error", None, time.monotonic() - start, "", f"could not start {python}: {exc}",
                                  False)
        os.close(write_fd)
        write_fd = -1
        try:
            exited = _wait_exited(proc.pid, start + timeout_s)
        finally:
            _kill_group(proc.pid)  # stragglers (children, daemons) and, on timeout, the program itself
            proc.kill()  # in case it left its group
            proc.wait()
        seconds = time.monotonic() - start
        report = _read_report(read_fd)
        stdout, stderr = _tail(io_dir / "stdout"), _tail(io_dir / "stderr")
        if exited and not report.startswith("ok"):
            return ExecResult("error", proc.returncode, seconds, stdout, stderr, False)
        status = _status(proc.returncode, not exited, stderr)
        return ExecResult(status, proc.returncode, seconds, stdout, stderr, report.startswith("ok 1"))
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
