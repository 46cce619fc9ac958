"""How long a user waits for the toolbox: seconds from typing the command to a URL that opens, and to stop.

    tools/bazel run //tools/bench:toolbox_bench -- --rounds 3

Builds a scratch workspace with one real MLflow run (sqlite store) and one TensorBoard event file, then
runs the real //tools:mlflow and //tools:tensorboard binaries (built; Bazel's own start is not counted) on free
loopback ports, `rounds` times each,
one at a time: the time until the URL line is printed (the server answered HTTP), the time to the first
successful page fetch, and the time from SIGTERM to exit. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _runfile(name: str) -> str:
    here = Path(os.path.abspath(__file__))  # <runfiles>/mlenv/tools/bench/toolbox_bench.py, links kept
    for base in (os.environ.get("RUNFILES_DIR"), str(here.parents[3])):
        for main in ("mlenv", "_main"):  # the main repository's runfiles folder: WORKSPACE / Bzlmod
            if base and Path(base, main, name).exists():
                return str(Path(base, main, name))
    raise SystemExit(f"toolbox_bench: {name} not found in the runfiles; run it with tools/bazel run")


def make_workspace(root: Path) -> None:
    import mlflow

    from ml.engine.tensorboard import ScalarWriter

    (root / ".mlenv").mkdir(parents=True)
    client = mlflow.MlflowClient(f"sqlite:///{root / '.mlenv' / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("bench"), run_name="bench-run")
    for step in range(50):
        client.log_metric(run.info.run_id, "train/loss", 1.0 / (step + 1), step=step)
    client.set_terminated(run.info.run_id)
    writer = ScalarWriter(root / ".mlenv" / "runs" / "bench" / "bench-run" / "tensorboard")
    for step in range(50):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    writer.close()


def one_round(binary: str, workspace: Path, pattern: str, page: str) -> tuple[float, float, float]:
    env = dict(os.environ, BUILD_WORKSPACE_DIRECTORY=str(workspace))
    start = time.monotonic()
    proc = subprocess.Popen([binary, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    url = None
    for line in proc.stdout:
        match = re.search(pattern, line)
        if match:
            url = match.group(1)
            break
    to_url = time.monotonic() - start
    if url is None:
        raise SystemExit(f"{binary} exited ({proc.wait()}) without printing its URL")
    with urllib.request.urlopen(url + page, timeout=60) as response:  # noqa: S310 - the http URL it printed
        response.read()
    to_page = time.monotonic() - start
    stop = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    to_exit = time.monotonic() - stop
    if code != 0:
        raise SystemExit(f"{binary} exited with {code} after SIGTERM")
    return to_url, to_page, to_exit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tools = {"//tools:mlflow": (_runfile("tools/toolbox/mlflow"), r"^MLflow UI: (http://\S+)", "/"),
             "//tools:tensorboard": (_runfile("tools/toolbox/tensorboard"), r"^TensorBoard: (http://\S+)", "/")}
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Path(scratch)
        make_workspace(workspace)
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, {args.rounds} rounds each\n")
        print("| command | to URL printed (s) | to first page (s) | SIGTERM to exit (s) |")
        print("|---|---|---|---|")
        for target, (binary, pattern, page) in tools.items():
            rounds = [one_round(binary, workspace, pattern, page) for _ in range(args.rounds)]
            cells = [f"{statistics.median(r[i] for r in rounds):.1f} (min {min(r[i] for r in rounds):.1f})"
                     for i in range(3)]
            print(f"| `{target}` (its built binary) | {' | '.join(cells)} |", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end; medians of {args.rounds} rounds (min in brackets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
