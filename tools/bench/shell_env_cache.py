"""Benchmark: do test results stay cached when the same checkout is tested from another shell?

Two shells on one machine rarely agree on PATH (a CI agent's and a laptop's, a venv activated, a login
shell against `sudo`). With `--incompatible_strict_action_env` PATH reaches no action's key, but a repository
rule that lists PATH in `environ` is fetched again when it changes; for `@mlenv_python` that gave root/ (a
source directory, whose mtime Bazel's action cache keeps) a new mtime, so under the next Bazel server every
Python test ran again. This clones each given commit, and in each clone (its own output base) runs the same
tests twice: from this shell, then (after `bazel shutdown`) from one whose PATH has the same folders in another
order. It prints how many of the second run's tests Bazel ran again (0 is right: nothing they read changed).

    python3 tools/bench/shell_env_cache.py [--revs BEFORE HEAD] [--targets //ml/engine:core_test ...]
    tools/bazel run //tools/bench:shell_env_cache -- [...]     (the same)

Commit first: the clones hold commits, not the working tree.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or Path(__file__).resolve().parents[2])

# Quick Python tests (a few seconds each): what is measured is whether they run again, not their length.
DEFAULT_TARGETS = ["//ml/engine:config_test", "//ml/engine:redact_test", "//ml/engine:checkpoint_test",
                   "//ml/engine:metrics_test", "//third_party/pip:env_smoke_test"]
EXECUTED = re.compile(r"Executed (\d+) out of (\d+) tests?")


def other_path(path: str) -> str:
    """The same folders, in reverse order (as two shells' rc files put them): nothing new to find on it."""
    return os.pathsep.join(reversed(path.split(os.pathsep)))


def test(clone: Path, user_root: Path, targets: list[str], path: str) -> tuple[float, int, int]:
    start = time.perf_counter()
    proc = subprocess.run([str(clone / "tools/bazel"), f"--output_user_root={user_root}", "test", *targets],
                          cwd=clone, capture_output=True, text=True, env={**os.environ, "PATH": path}, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`bazel test` failed in {clone} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    found = EXECUTED.search(proc.stderr + proc.stdout)
    if not found:
        sys.exit(f"no 'Executed N out of M tests' line in Bazel's output:\n{proc.stderr[-3000:]}")
    return wall, int(found.group(1)), int(found.group(2))


def shutdown(clone: Path, user_root: Path) -> None:
    subprocess.run([str(clone / "tools/bazel"), f"--output_user_root={user_root}", "shutdown"], cwd=clone,
                   capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revs", nargs="+", default=["HEAD"], help="commits to measure, each in its own clone")
    parser.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="shell-env-cache-"))
    path_a = os.environ["PATH"]
    path_b = other_path(path_a)
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {len(args.targets)} test targets; "
          f"second shell's PATH: {path_b}", flush=True)
    rows = []
    try:
        for rev in args.revs:
            sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip()
            clone = scratch / sha / "mlenv"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            subprocess.run(["git", "checkout", "-q", sha], cwd=clone, check=True)
            user_root = scratch / sha / "bazel"
            first = test(clone, user_root, args.targets, path_a)
            # A new Bazel server for the second shell, as for each CI run (.ci/run ends with `bazel shutdown`):
            # a server that stays up keeps root/'s old metadata and hides the refetch.
            shutdown(clone, user_root)
            second = test(clone, user_root, args.targets, path_b)
            rows.append((rev, sha, first, second))
            print(f"{rev} ({sha}): first shell {first[0]:.1f} s, ran {first[1]} of {first[2]}; "
                  f"second shell {second[0]:.1f} s, ran {second[1]} of {second[2]} again", flush=True)
            shutdown(clone, user_root)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(scratch)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| commit | first shell | second shell (PATH reordered) | tests run again |\n|---|---|---|---|")
    for rev, sha, first, second in rows:
        print(f"| {rev} ({sha}) | {first[0]:.1f} s | {second[0]:.1f} s | **{second[1]} of {second[2]}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
