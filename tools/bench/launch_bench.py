"""Launch overhead and data-parallel throughput: `--on local` vs `--on ray` (fresh and running clusters).

    tools/bazel run //tools/bench:launch_bench [-- --samples 16384]

Figures (docs/benchmarks.md, issue 12), all from one run of this script on one machine:
- time from the command to the trainer's first step (its first progress line, `--log-every 1`) for
  `--on local` (torchrun's agent), `--on ray --address local` (a fresh 2-node cluster started by the
  launcher) and `--on ray --address http://...` (a 2-node cluster already running);
- training samples/s of 2 workers under Ray Train vs the same 2 processes under `--on local`: the mean of
  the trainer's own `train/samples_per_s` (tracking.jsonl), same tiny homefeed config.
Runs inside a private network namespace (re-executes itself under `unshare -n` when root): Ray listens on
every interface.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.geteuid() == 0 and os.environ.get("MLENV_BENCH_NETNS") != "1" and shutil.which("unshare"):
    os.environ["MLENV_BENCH_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                          sys.executable, *sys.orig_argv[1:]])

from tools.launch.ray import cluster  # noqa: E402

LAUNCH = "tools/launch/homefeed_launch"


def tiny(samples: int) -> list[str]:
    return ["--batch-size", "128", "--log-every", "1", "--epochs", "1", "--no-export", "--checkpoint-every", "100000",
            "--set", f"train_samples={samples}", "--set", "eval_samples=512", "--set", "num_shards=2",
            "--set", "num_users=400", "--set", "num_items=300", "--set", "seq_len=8", "--set", "embed_dim=16",
            "--set", "seq_heads=2", "--set", "seq_layers=1", "--set", "mlp_dims=32,16", "--set", "dropout=0"]


def timed_launch(target: list[str], run_dir: Path, samples: int) -> dict:
    """Seconds from the command to the first training step and to the end; the trainer's mean samples/s."""
    cmd = [LAUNCH, *target, "--", *tiny(samples), "--run-name", run_dir.name, "--set", f"run_dir={run_dir}"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir.parent / 'mlflow.db'}"})
    first_step, tail = None, []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if first_step is None and "step 1/" in line:
            first_step = time.monotonic() - start
    code = proc.wait()
    total = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"{' '.join(target)} failed ({code}):\n{''.join(tail)}")
    rates = [json.loads(line).get("metrics", {}).get("train/samples_per_s")
             for line in (run_dir / "tracking.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    # The first logged rate includes start-up (first batches, DDP buckets): leave it out.
    steady = rates[1:] or rates
    return {"first_step_s": first_step, "total_s": total, "samples_per_s": sum(steady) / len(steady)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=16384, help="training rows (2 workers x 128 per step)")
    opts = p.parse_args()
    # The launcher lies in this binary's runfiles (the main file's path, not resolved: runfiles are symlinks).
    here = os.path.abspath(__file__)
    # The main repository's runfiles folder: `mlenv` (WORKSPACE) or `_main` (Bzlmod).
    os.chdir(here[:here.index(".runfiles/") + len(".runfiles/")] + here.split(".runfiles/", 1)[1].split("/", 1)[0])
    work = Path(tempfile.mkdtemp(prefix="launch-bench-"))
    results = {}
    results["local"] = timed_launch(["--on", "local", "--nproc-per-node", "2"], work / "local", opts.samples)
    results["ray_fresh"] = timed_launch(["--on", "ray", "--address", "local", "--nodes", "2"], work / "ray_fresh",
                                        opts.samples)
    with cluster.LocalCluster(nodes=2, cpus_per_node=1) as running:
        results["ray_running"] = timed_launch(["--on", "ray", "--address", running.address, "--nodes", "2"],
                                              work / "ray_running", opts.samples)
    load = os.getloadavg()
    print(json.dumps(results, indent=2))
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs")
    print("| path | command -> first step | whole run | samples/s (mean of logged steps) |")
    print("|---|---|---|---|")
    for name in ("local", "ray_fresh", "ray_running"):
        r = results[name]
        print(f"| {name} | {r['first_step_s']:.1f} s | {r['total_s']:.1f} s | {r['samples_per_s']:,.0f} |")
    for name in ("ray_fresh", "ray_running"):
        print(f"{name} / local samples/s: {results[name]['samples_per_s'] / results['local']['samples_per_s']:.1%}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
