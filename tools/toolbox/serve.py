"""What the two toolbox commands (//tools:mlflow, //tools:tensorboard) share: ports, paths, a served child.

Both tools are thin front doors to servers that live only inside the locked environment (`mlflow server`,
`tensorboard`): a user types one Bazel command instead of finding an interpreter with those packages. This
module holds the parts that make that front door safe and honest:

- the port is checked before the server starts, so "port taken" is one clear line, not a server traceback;
- a relative path means the user's workspace (under `bazel run` the process runs in its runfiles folder);
- the server runs as a child in its own session; SIGINT/SIGTERM stop it and every process it started;
- the URL is printed only once the server answers HTTP, so a printed URL always opens.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ToolboxError", "choose_port", "describe_binding", "is_loopback", "python_command", "run_server", "url_host",
           "user_path", "workspace"]


class ToolboxError(Exception):
    """A bad input or an unusable environment; the message says what was wrong and what to do."""


def workspace() -> Path:
    """The user's workspace under `bazel run` ($BUILD_WORKSPACE_DIRECTORY), else the current folder."""
    return Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd())


def user_path(text: str) -> Path:
    """A path the user typed: relative paths are relative to the workspace, not to Bazel's runfiles."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else workspace() / path


def python_command(*args: str) -> list[str]:
    """This interpreter, with its isolation flags kept, so the child sees only the locked environment."""
    return [sys.executable, *(["-S"] if sys.flags.no_site else []), *args]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """The host part of a URL that reaches a server listening on `host` from this machine."""
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 - every interface: reached on loopback from here
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def describe_binding(host: str) -> str:
    if is_loopback(host):
        return f"listening on {host} only (loopback: this machine); pass --host 0.0.0.0 to share it on the network"
    return f"listening on {host}: reachable from the network, with no authentication"


def _bind_probe(host: str, port: int) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers set it: a port in TIME_WAIT is free for them, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        return sock.getsockname()[1]


def choose_port(host: str, port: int | None, default: int, tool: str) -> int:
    """`port` if given and free (an error if taken); else `default` if free; else any free port."""
    try:
        if port is not None:
            try:
                return _bind_probe(host, port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ToolboxError(
                        f"port {port} on {host} is already in use (another {tool} or server is listening there); "
                        f"pass another --port, --port 0 for any free port, or stop that process "
                        f"(`ss -ltnp 'sport = :{port}'` names it)") from exc
                raise
        try:
            return _bind_probe(host, default)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            free = _bind_probe(host, 0)
            print(f"{tool}: port {default} is taken; using free port {free}", file=sys.stderr)
            return free
    except ToolboxError:
        raise
    except OSError as exc:
        raise ToolboxError(f"cannot listen on {host}: {exc.strerror}; --host must be an address of this machine "
                           f"(127.0.0.1 for this machine only, 0.0.0.0 for every interface)") from exc
    except OverflowError as exc:
        raise ToolboxError(f"--port must be between 0 and 65535, got {port}") from exc


def _answers(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own http:// health URL
            return 200 <= response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int:
    """Stops the server's whole session (uvicorn/tensorboard may have started helpers)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    else:  # the leader is gone; its helpers may not be
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


class _Stopped(Exception):
    pass


def run_server(command: Sequence[str], *, tool: str, health_url: str, announce: Sequence[str],
               env: dict[str, str] | None = None, start_timeout_s: float = 180.0) -> int:
    """Runs `command`, prints `announce` once `health_url` answers, then waits for the server or a signal.

    Returns 0 after SIGINT/SIGTERM (the user stopped it), the server's exit code if it died on its own.
    """
    proc = subprocess.Popen(list(command), env=env, start_new_session=True, stdin=subprocess.DEVNULL)

    def on_signal(signum, frame):
        raise _Stopped()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers(health_url, timeout=2.0):
            if proc.poll() is not None:
                print(f"{tool}: error: the server exited with code {proc.returncode} before answering "
                      f"{health_url}; its own messages are above", file=sys.stderr)
                return proc.returncode or 1
            if time.monotonic() > deadline:
                print(f"{tool}: error: the server did not answer {health_url} within {start_timeout_s:.0f} s; "
                      f"stopping it (a very busy machine? its messages are above)", file=sys.stderr)
                _stop(proc)
                return 1
            time.sleep(0.5)
        for line in announce:
            print(line, flush=True)
        print(f"{tool}: Ctrl-C stops it.", file=sys.stderr, flush=True)
        code = proc.wait()
        print(f"{tool}: the server exited with code {code}", file=sys.stderr)
        return code or 1
    except (_Stopped, KeyboardInterrupt):
        _stop(proc)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            _stop(proc)
