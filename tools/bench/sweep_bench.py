"""Figures of docs/benchmarks.md, "Hyperparameter sweeps": what a homefeed sweep buys, and what pruning saves.

    tools/bazel run //tools/bench:sweep_bench -- --trials 6

Runs, one after the other on this machine, with ml/homefeed/sweep.yaml's budget (fixed: settings):
  1. the default homefeed config (no tuned key changed) -> held-out click AUC;
  2. the sweep with the space file's pruner, N trials, parallel 1;
  3. the same sweep (same sampler seed) with pruner: none.
(`--pruners` picks other pruners, `--objective` the trials' value: last or best_epoch, docs/sweeps.md)
and prints a Markdown table: wall time, finished/pruned trials, best click AUC and the trial that reached it.
It exists so those numbers come from a command anyone can rerun, not from a notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SWEEP = Path("ml/homefeed/sweep").absolute()
TRAIN = Path("ml/homefeed/train").absolute()
SPACE = Path("ml/homefeed/sweep.yaml").absolute()


def _sweep(out: Path, space: dict, name: str, trials: int, env: dict, sets: list[str]) -> dict:
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    cmd = [str(SWEEP), "--trainer", str(TRAIN), "--config-class", "ml.homefeed.train:HomefeedConfig", "--project",
           "homefeed", "--train-label", "//ml/homefeed:train", "--space", str(path), "--storage",
           f"sqlite:///{out}/optuna.db", "--out", str(out / name), "--trials", str(trials), "--no-plots",
           *[x for item in sets for x in ("--set", item)]]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"sweep {name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    summary = json.loads((out / name / "summary.json").read_text())
    return {**summary, "wall_s": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--out", help="folder for the studies and runs (default: a new temp folder)")
    parser.add_argument("--objective", choices=("last", "best_epoch"),
                        help="the sweeps' objective (default: the space file's; docs/sweeps.md)")
    parser.add_argument("--pruners", default="",
                        help="comma-separated pruners to run (default: the space file's, then none)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="change the space file's budget for every run (e.g. --set train_samples=20000)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="sweep-bench-")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{out}/mlflow.db")
    space = yaml.safe_load(SPACE.read_text())
    if args.objective:
        space["objective"] = args.objective

    fixed = [x for k, v in space["fixed"].items() for x in ("--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    started = time.monotonic()
    default_dir = out / "default"
    fixed += [x for item in args.sets for x in ("--set", item)]
    proc = subprocess.run([str(TRAIN), *fixed, "--set", f"run_dir={default_dir}", "--set", "run_name=bench-default"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"default run failed:\n{proc.stderr[-4000:]}")
    default_wall = time.monotonic() - started
    default_auc = json.loads((default_dir / "metrics.json").read_text())["eval_metrics"]["click_auc"]
    per_epoch = [json.loads(line)["metrics"]["eval/click_auc"] for line in
                 (default_dir / "tracking.jsonl").read_text().splitlines()
                 if '"eval/click_auc"' in line and json.loads(line).get("kind") == "metrics"]

    rows = []
    pruners = [p for p in args.pruners.split(",") if p] or [space.get("pruner", "median"), "none"]
    for pruner in pruners:
        s = dict(space, pruner=pruner)
        r = _sweep(out, s, f"pruner-{pruner}", args.trials, env, args.sets)
        rows.append((f"sweep, pruner {pruner}", r))

    print(f"\nhomefeed, budget per run: {space['fixed']} + {args.sets}; {args.trials} trials, sampler {space['sampler']} "
          f"seed {space['seed']}, objective {space.get('objective', 'last')}, 1 worker; results in {out}\n"
          f"default config, held-out click AUC after each epoch: {', '.join(f'{v:.4f}' for v in per_epoch)}\n")
    print("| run | wall time | trials finished (pruned) | best held-out click AUC | best trial |")
    print("|---|---|---|---|---|")
    print(f"| default config | {default_wall:.0f} s | 1 | {default_auc:.4f} | - |")
    for label, r in rows:
        epoch = f" (epoch {r['best_epoch']})" if r.get("best_epoch") else ""
        print(f"| {label} | {r['wall_s']:.0f} s | {r['finished']} ({r['pruned']}) | {r.get('best_value', float('nan')):.4f}"
              f"{epoch} | {r.get('best_trial', '-')} |")
    for label, r in rows:
        print(f"{label}: trials table {r.get('trials_csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
