"""`tools/bazel run //tools:mlflow`: the MLflow UI on the runs the trainers recorded, one command away.

MLflow lives only inside the locked environment, so `mlflow ui` typed in a shell does not exist on a fresh
machine. This command starts the locked `mlflow server` on the same store the trainers write to, on
127.0.0.1, and prints the URL (of a run's page with `--run`) once the server answers:

    tools/bazel run //tools:mlflow                                # embedded store, port 5000 or a free one
    tools/bazel run //tools:mlflow -- --run <run id or name>      # prints that run's page
    tools/bazel run //tools:mlflow -- --port 8080 --host 0.0.0.0  # a given port, on every interface
    tools/bazel run //tools:mlflow -- --compare RUN_A RUN_B       # params and final metrics side by side

Store: `--tracking-uri` > `MLFLOW_TRACKING_URI` > `<workspace>/.mlenv/mlflow.db`. When the store is an MLflow
server (http://...), that server already is the UI: the command checks it answers and prints its URL.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from tools.toolbox import compare
from tools.toolbox.runs import Store, check_store, find_run, resolve_store
from tools.toolbox.serve import ToolboxError, choose_port, describe_binding, is_loopback, python_command, run_server, url_host

__all__ = ["main", "server_command"]

PROG = "tools/bazel run //tools:mlflow --"
TOOL = "mlflow"
DEFAULT_PORT = 5000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="the MLflow store to show (default: $MLFLOW_TRACKING_URI, else the "
                                               "embedded .mlenv/mlflow.db of this workspace)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one if it is taken; "
                                                 f"0: any free port; a given port that is taken is an error)")
    parser.add_argument("--allowed-hosts", metavar="HOSTS",
                        help="with --host 0.0.0.0: host names other machines use to reach it, comma-separated "
                             "(MLflow answers only requests addressed to localhost otherwise)")
    parser.add_argument("--run", metavar="RUN", help="a run id or run name: print the URL of its page")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="print params and final metrics of two runs side by side, and exit")
    return parser


def server_command(store: Store, host: str, port: int, allowed_hosts: str | None = None) -> list[str]:
    command = python_command("-m", "mlflow", "server", "--backend-store-uri", store.uri, "--host", host,
                             "--port", str(port), "--workers", "1")
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if store.artifact_root:
        # New experiments and proxied uploads land beside the trainers' artifacts, never in Bazel's runfiles.
        command += ["--default-artifact-root", store.artifact_root, "--artifacts-destination", store.artifact_root]
    return command


def _run_url(base: str, run) -> str:
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        store = resolve_store(args.tracking_uri)
        # The port first: it is checked in microseconds, the store needs MLflow imported (seconds).
        serving = not args.compare and not store.is_server
        port = choose_port(args.host, args.port, DEFAULT_PORT, TOOL) if serving else 0
        client = check_store(store)
        if args.compare:
            runs = [find_run(client, key) for key in args.compare]
            compare.print_table(runs)
            return 0
        run = find_run(client, args.run) if args.run else None
        if store.is_server:
            base = store.uri.rstrip("/")
            print(f"MLflow UI: {base}  (the tracking server from {store.source} serves its own UI)")
            if run is not None:
                print(f"run {run.info.run_name}: {_run_url(base, run)}")
            return 0
    except ToolboxError as exc:
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        return 2
    base = f"http://{url_host(args.host)}:{port}"
    announce = [f"MLflow UI: {base}  ({describe_binding(args.host)}; store {store.uri})"]
    if run is not None:
        announce.append(f"run {run.info.run_name}: {_run_url(base, run)}")
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine because a UI was opened
    env.setdefault("DO_NOT_TRACK", "true")
    # The server's job runner serves GenAI jobs (scorers, prompt optimisation): one more process, unused here.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    print(f"{TOOL}: starting the MLflow server on {args.host}:{port} (store {store.uri}); "
          f"it takes ~20 s on a busy 2-core machine", file=sys.stderr, flush=True)
    if not is_loopback(args.host) and not args.allowed_hosts:
        print(f"{TOOL}: note: MLflow answers only requests addressed to localhost; for other machines pass "
              f"--allowed-hosts with the name they use (e.g. --allowed-hosts {socket.gethostname()}:{port})",
              file=sys.stderr)
    return run_server(server_command(store, args.host, port, args.allowed_hosts), tool=TOOL, health_url=f"{base}/health",
                      announce=announce, env=env)


if __name__ == "__main__":
    sys.exit(main())
