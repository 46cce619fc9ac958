"""Benchmark: from `tools/bazel run //tools/new:project` to a green `bazel test` and to a first trained model.

Prints a markdown section for docs/benchmarks.md ("New project"). Warm environment: @pypi is installed and
the engine's libraries are built; the new project's own files and tests are new to Bazel, as for a team
that just typed the command.

    tools/bazel run //tools/bench:new_project_bench [-- --variant pytorch:task --variant tensorflow] [--keep]

For each variant, in the workspace this is run from:
1. generate ml/<bench name>/ with the real command (timed);
2. `tools/bazel test` on every non-GPU test of the new project (the command's first suggestion; image
   targets are not built: they are not tests), timed until green;
3. `tools/bazel run //ml/<name>:train` (default flags), timed until the trained and exported model is there.
The generated folder is removed afterwards (unless --keep); its runs stay under .mlenv/runs/<name>/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", Path(__file__).resolve().parents[2]))
BAZEL = str(ROOT / "tools" / "bazel")


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILD_", "RUNFILES", "BAZEL_"))}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


def measure(framework: str, loop: str | None, keep: bool) -> dict:
    name = f"bench_{framework[:2]}_{loop or 'fit'}_{datetime.datetime.now():%H%M%S}"
    folder = ROOT / "ml" / name
    extra = ["--loop", loop] if loop else []
    try:
        t_gen, _ = timed([BAZEL, "run", "//tools/new:project", "--", "--name", name, "--framework", framework,
                          *extra, "--owner", "@bench/new-project"])
        query = f"tests(//ml/{name}/...) except attr(tags, '\\bgpu\\b', //ml/{name}/...)"
        t_query, proc = timed([BAZEL, "query", query, "--output=label"])
        tests = proc.stdout.split()
        t_test, _ = timed([BAZEL, "test", "--local_test_jobs=1", *tests])
        t_train, proc = timed([BAZEL, "run", f"//ml/{name}:train"])
        auc = re.search(r"auc[ :]+([0-9.]+)", proc.stdout + proc.stderr)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {"variant": f"{framework} {loop or 'fit'}", "generate": t_gen, "tests": len(tests),
            "green": t_gen + t_query + t_test, "test_only": t_test, "train": t_train,
            "trained": t_gen + t_train, "auc": auc.group(1) if auc else "?"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", choices=["pytorch:task", "pytorch:native", "tensorflow"],
                        help="repeatable; default: pytorch:task")
    parser.add_argument("--keep", action="store_true", help="keep the generated project folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    for variant in args.variant or ["pytorch:task"]:
        framework, _, loop = variant.partition(":")
        rows.append(measure(framework, loop or None, args.keep))
    print(f"machine: {os.cpu_count()} cores; load before: {load}")
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}\n")
    print("| variant | generate | green `bazel test` (tests) | of which the test run | first trained model "
          "(`:train`) | command to trained model | held-out AUC |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['generate']:.1f} s | {r['green']:.0f} s ({r['tests']}) | {r['test_only']:.0f} s | "
              f"{r['train']:.0f} s | {r['trained']:.0f} s | {r['auc']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
