"""Benchmark: presubmit vs the full suite, what a lock change selects, cold vs remote-cache-warm builds.

Prints a markdown report for docs/benchmarks.md ("Presubmit"). Run from a clean checkout (it edits one file
at a time and restores it):

    python3 tools/bench/presubmit_bench.py [--file ml/homefeed/model_test.py] [--cache-targets //...]

1. One-file change: append a comment to --file, time `ci/presubmit --base HEAD`; append another, time
   `tools/bazel test --config=ci //...`. Both pass --nocache_test_results, so every test they select runs
   (a CI machine without a result cache), and both pay for rebuilding what the change invalidates.
2. Lock change: append a comment to the CPU lock and count what `ci/presubmit --dry-run` selects.
3. Remote cache: `bazel build --config=remote-cache <targets>` in a fresh output base against an empty nginx
   cache (cold), then in another fresh output base (warm). The uv cache is shared, so @pypi installs from it
   in both (about 20 s each); repository fetches are never served by Bazel's remote cache.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tools.testing.http_cache import NginxCache  # noqa: E402

BAZEL = str(ROOT / "tools" / "bazel")
LOCK = ROOT / "third_party/pip/requirements_lock_cpu.txt"


def run(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc


class Edited:
    """Appends `line` to `path` for the duration of a with-block, then restores the original bytes."""

    def __init__(self, path: Path, line: str):
        self.path, self.line, self.original = path, line, path.read_bytes()

    def __enter__(self):
        self.path.write_bytes(self.original + self.line.encode())

    def __exit__(self, *exc):
        self.path.write_bytes(self.original)


def spawns(log: Path) -> list[dict]:
    """The spawns of a --execution_log_json_file (concatenated JSON objects)."""
    text, decoder, found, i = log.read_text(), json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return found
        obj, i = decoder.raw_decode(text, i)
        found.append(obj)


def explain_misses(cold: Path, warm: Path) -> list[str]:
    """For each spawn the warm build executed: its mnemonic and the inputs whose digest differ from the cold build."""
    def key(spawn):
        outputs = spawn.get("listedOutputs") or spawn.get("actualOutputs") or []
        return tuple(sorted(o if isinstance(o, str) else o.get("path", "") for o in outputs))

    def inputs(spawn):
        return {i["path"]: i.get("digest", {}).get("hash") for i in spawn.get("inputs", [])}

    before = {key(s): s for s in spawns(cold)}
    lines = []
    for spawn in spawns(warm):
        if spawn.get("remoteCacheHit"):
            continue
        old = before.get(key(spawn))
        old_inputs = inputs(old) if old is not None else {}
        diff = [p for p, h in inputs(spawn).items() if old is not None and old_inputs.get(p) != h]
        lines.append(f"{spawn.get('mnemonic')} {', '.join(key(spawn))[:80]}: "
                     + (f"{len(diff)} input(s) differ from the cold build, e.g. {', '.join(sorted(diff)[:3])}"
                        if diff else "same inputs" if old else "not in the cold build"))
    return lines


def count(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "?"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", default="ml/homefeed/model_test.py", help="the one file to change")
    # //... spelled as its top-level packages: a second output base would otherwise walk into the first one's
    # bazel-<workspace> symlink (Bazel skips only its own).
    top = sorted(f"//{d.name}/..." for d in ROOT.iterdir()
                 if d.is_dir() and not d.name.startswith(("bazel-", ".")) and any(d.rglob("BUILD.bazel")))
    parser.add_argument("--cache-targets", nargs="+", default=["//:all", *top],
                        help="what the remote-cache builds build (default: //... without bazel-* symlinks)")
    parser.add_argument("--skip", action="append", default=[], choices=["one-file", "lock", "cache"])
    args = parser.parse_args()
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", args.file, str(LOCK)], cwd=ROOT).returncode:
        sys.exit(f"{args.file} or the lock has uncommitted changes; run from a clean checkout")

    lines = [f"Measured {datetime.date.today()} on {os.cpu_count()} cores; load before: "
             f"`{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}`", ""]
    total_tests = len(run([BAZEL, "query", "tests(//...) except attr(tags, 'manual|gpu', //...)"])[1].stdout.split())

    if "one-file" not in args.skip:
        run([BAZEL, "build", "--config=ci", "//..."])  # both measurements start from the same built tree
        with Edited(ROOT / args.file, f"\n# presubmit bench {uuid.uuid4()}\n"):
            presubmit_s, proc = run([str(ROOT / "ci/presubmit"), "--base", "HEAD", "--bazel-flag=--nocache_test_results",
                                     "--out", tempfile.mkdtemp(prefix="presubmit-bench-")], check=False)
        if " 0 failed" not in proc.stdout:
            sys.exit(f"presubmit's tests failed:\n{proc.stdout[-3000:]}")
        lint = "lint clean" if "buildifier: ok" in proc.stdout and "ruff: ok" in proc.stdout else "lint FAILED"
        selected = count(r"selected: ([^\n]*)", proc.stdout)
        ran = count(r"JUnit: (\d+ passed, \d+ failed)", proc.stdout)
        with Edited(ROOT / args.file, f"\n# full bench {uuid.uuid4()}\n"):
            full_s, proc = run([BAZEL, "test", "--config=ci", "--nocache_test_results", "//..."], check=False)
        failed = count(r"(\d+) tests? fail", proc.stdout + proc.stderr)
        failures = ", ".join(re.findall(r"FAIL: (//\S+)", proc.stderr))
        full_note = "" if proc.returncode == 0 else f"; {failed} failed: {failures}"
        lines += [
            f"| one-file change (`{args.file}`), every selected test runs | wall time |",
            "|---|---|",
            f"| `ci/presubmit --base HEAD` ({lint}; query; {selected}; {ran} test cases) | {presubmit_s:.1f} s |",
            f"| `tools/bazel test --config=ci //...` ({total_tests} tests{full_note}) | {full_s:.1f} s |",
            f"| speed-up (goal >= 5x) | {full_s / presubmit_s:.1f}x |",
            "",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)  # partial results survive a later failure

    if "lock" not in args.skip:
        with Edited(LOCK, f"# presubmit bench {uuid.uuid4()}\n"):
            lock_s, proc = run([str(ROOT / "ci/presubmit"), "--base", "HEAD", "--dry-run", "--no-lint"])
        selected = count(r"selected: ([^\n]*)", proc.stdout)
        cpu_lane = count(r"lane cpu: test \d+ target\(s\), (\d+) test", proc.stdout)
        run([BAZEL, "build", "@pypi//:env"])  # reinstall the unchanged lock's environment
        lines += [
            "| lock change (a comment appended to `requirements_lock_cpu.txt`) | |",
            "|---|---|",
            f"| selected by `ci/presubmit --dry-run` (GPU and manual tests included) | {selected} |",
            f"| tests the CPU lane runs | {cpu_lane} of the full suite's {total_tests} |",
            f"| its wall time (includes re-installing @pypi, which the changed lock invalidates) | {lock_s:.1f} s |",
            "",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    if "cache" not in args.skip:
        scratch = Path(tempfile.mkdtemp(prefix="presubmit-bench-cache-"))
        log_dir = Path(tempfile.mkdtemp(prefix="presubmit-bench-logs-"))  # kept: which actions missed and why
        try:
            with NginxCache(scratch / "nginx") as cache:
                env = {"MLENV_REMOTE_CACHE": cache.url}
                times, hits, logs = {}, {}, {}
                # One output root, expunged between the builds: a fresh CI machine that checks out at the same
                # path (what a CI fleet does). The environment's byte code embeds its install path, so a
                # different path would still miss on every action that takes @pypi as input.
                root = f"--output_user_root={scratch / 'root'}"
                for name in ("cold", "warm"):
                    if name == "warm":
                        run([BAZEL, root, "clean", "--expunge"], check=False)
                    logs[name] = log_dir / f"{name}.json"
                    times[name], proc = run([BAZEL, root, "build", "--config=ci", "--config=remote-cache",
                                             "--symlink_prefix=/", f"--execution_log_json_file={logs[name]}",
                                             *args.cache_targets], env=env)
                    hits[name] = count(r"INFO: (\d+ processes?: [^\n]*)", proc.stderr)
                run([BAZEL, root, "shutdown"], check=False)
                size = cache.size_bytes()
                misses = explain_misses(logs["cold"], logs["warm"])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        lines += [
            "| `tools/bazel build --config=remote-cache //...`, fresh output base | wall time | processes |",
            "|---|---|---|",
            f"| cold (empty cache; fills it: {size / 1e6:.0f} MB) | {times['cold']:.1f} s | {hits['cold']} |",
            f"| remote-cache warm (same path, output base expunged: a fresh machine) | {times['warm']:.1f} s | {hits['warm']} |",
            f"| ratio | {times['cold'] / times['warm']:.1f}x | |",
            "",
            *[f"- warm miss: {line}" for line in misses],
            "",
        ]
    lines.append(f"Load after: `{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}`")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
