"""`--address local`: a throwaway Ray cluster on this machine (a head and worker nodes), torn down after.

Every node is one `ray start --block` process in its own session, so the node and every daemon it starts
(GCS, raylet, dashboard, workers) share one process group; teardown signals that group (SIGTERM, then
SIGKILL after a grace period), which also covers Ctrl-C, SIGTERM and failures of the launcher. `ray stop`
is never used: it stops every Ray process of the user on the machine, other people's clusters included.

Ray ignores --node-ip-address 127.0.0.1 and listens on all interfaces (shared/notes/services.md). So the
launcher runs the cluster, itself included, in a private network namespace with only loopback up
(`isolate()`: when root, re-exec under `unshare -n`); otherwise it warns loudly that the cluster is
reachable from the network for the duration of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tools.launch.spec import LaunchError

__all__ = ["LocalCluster", "isolate", "in_private_network"]

START_TIMEOUT_S = 180
STOP_GRACE_S = 15
_NETNS_ENV = "MLENV_LAUNCH_NETNS"


def in_private_network() -> bool:
    """True when this process's network namespace has loopback only (a fresh `unshare -n`)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def isolate() -> None:
    """Re-execs the launcher inside `unshare -n` with lo up when root; warns when that is not possible."""
    if in_private_network():
        if os.environ.get(_NETNS_ENV) != "1":
            subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
        return
    if os.environ.get(_NETNS_ENV) == "1":
        raise LaunchError("re-executed under unshare -n but still not in a private network namespace; "
                          "run without root to fall back to a warning")
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        argv = [sys.executable, *sys.orig_argv[1:]]
        os.environ[_NETNS_ENV] = "1"
        print("launch: starting the local Ray cluster in a private network namespace (loopback only)",
              file=sys.stderr, flush=True)
        os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv])
    print("launch: WARNING: Ray listens on every network interface of this machine and cannot be kept on "
          "loopback; the local cluster is reachable from the network while it runs. Run as root (the launcher "
          "then uses a private network namespace, `unshare -n`) or on a machine without untrusted neighbours.",
          file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    """The `ray` command of this interpreter's environment (the console script is not in runfiles)."""
    flags = ["-S"] if sys.flags.no_site else []
    return [sys.executable, *flags, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; "
            "sys.exit(main())"]


def _get(url: str):
    """GET url as JSON with this process's Ray token (RAY_AUTH_TOKEN)."""
    headers = {"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"} if os.environ.get("RAY_AUTH_TOKEN") else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())


def _alive_nodes(dashboard: str) -> int:
    """How many nodes the State API (GET /api/v0/nodes) lists as ALIVE."""
    data = _get(f"{dashboard}/api/v0/nodes?limit=100")

    def count(obj) -> int:
        if isinstance(obj, dict):
            own = 1 if obj.get("state") == "ALIVE" and "node_id" in obj else 0
            return own + sum(count(v) for v in obj.values())
        if isinstance(obj, list):
            return sum(count(v) for v in obj)
        return 0

    return count(data)


class LocalCluster:
    """`with LocalCluster(nodes=2, cpus_per_node=1) as c:` c.address is the dashboard (the Jobs API)."""

    def __init__(self, nodes: int = 2, cpus_per_node: float = 1, gpus_per_node: int = 0) -> None:
        self.nodes = nodes
        self.cpus = max(1, int(-(-cpus_per_node // 1)))
        self.gpus = gpus_per_node
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mlenv-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self._procs: list[subprocess.Popen] = []
        self._previous_sigterm = None
        # Ray's token authentication with a token of this cluster's own (not ~/.ray/auth_token): the nodes,
        # the Jobs API client and the job all read it from the environment this process hands down.
        # RAY_ADDRESS: Ray's "auto" address scans the machine for GCS processes and refuses when it finds
        # several (other people's clusters): name ours for every process of this cluster.
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}",
                           "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)})

    def _start_node(self, extra: list[str], log: Path) -> None:
        cmd = [*_ray_cli(), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus),
               "--dashboard-agent-listen-port", str(_free_port()), *extra]
        env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or os.pathsep.join(sys.path),
               "RAY_USAGE_STATS_ENABLED": "0"}
        with open(log, "wb") as out:
            self._procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True))

    def _wait(self, what: str, ready, deadline: float) -> None:
        while True:
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None:
                    tail = (self.temp_dir / f"node-{i}.log").read_text(errors="replace")[-2000:]
                    raise LaunchError(f"Ray node {i} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise LaunchError(f"the local Ray cluster did not come up in {START_TIMEOUT_S} s ({what}); "
                                  f"its logs are in {self.temp_dir}")
            time.sleep(1)

    def start(self) -> LocalCluster:
        self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        deadline = time.monotonic() + START_TIMEOUT_S
        print(f"launch: starting a local Ray cluster (head + {self.nodes - 1} worker node(s), "
              f"{self.cpus} CPU each) in {self.temp_dir}", file=sys.stderr, flush=True)
        self._start_node(["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                          "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port",
                          str(_free_port()), "--temp-dir", str(self.temp_dir)], self.temp_dir / "node-0.log")
        self._wait("the head's dashboard", lambda: _get(f"{self.address}/api/version") is not None, deadline)
        for i in range(1, self.nodes):
            # A temp dir of its own: a node's log monitor streams every worker log in its session folder, so
            # nodes sharing the head's printed each worker's lines once per node.
            self._start_node(["--address", f"127.0.0.1:{self.gcs_port}", "--temp-dir", str(self.temp_dir / f"n{i}")],
                             self.temp_dir / f"node-{i}.log")
        self._wait(f"{self.nodes} nodes", lambda: _alive_nodes(self.address) >= self.nodes, deadline)
        print(f"launch: local Ray cluster up at {self.address}", file=sys.stderr, flush=True)
        return self

    def stop(self, keep_logs: bool = False) -> None:
        """Every node's process group: SIGTERM, then SIGKILL after STOP_GRACE_S; then the temp dir (kept, with
        the nodes' logs, when `keep_logs`)."""
        for proc in self._procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Daemons outlive their `ray start` parent for a moment: kill whatever is left in each group.
        for proc in self._procs:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        self._procs.clear()
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        print("launch: local Ray cluster stopped" + (f"; its logs are in {self.temp_dir}" if keep_logs else ""),
              file=sys.stderr, flush=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def __exit__(self, exc_type, *_exc) -> None:
        self.stop(keep_logs=exc_type is not None and not issubclass(exc_type, KeyboardInterrupt))


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
