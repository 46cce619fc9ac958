"""Benchmark: a remote cache shared by checkouts at different paths (issue 18 section 4).

CI fleets do not clone to one path, and each path gets its own Bazel output base. This clones the committed
HEAD twice, at two different paths, starts nginx as an HTTP cache on loopback (tools/testing/http_cache.py),
and builds the same targets with `--config=remote-cache` in each: the first fills the cache (cold), the
second (warm) should be served from it. Prints the hit rate for docs/benchmarks.md and, for every spawn the
warm build ran itself, the inputs whose digests differ from the cold build (from both builds'
--execution_log_json_file): that is how path-dependent inputs are found.

    python3 tools/bench/cross_path_cache.py [--targets //ml/homefeed:bundle ...] [--keep DIR]
    tools/bazel run //tools/bench:cross_path_cache -- [...]     (the same)

The uv cache is shared, so each clone installs @pypi from it (a repository rule: never served remotely).
Commit first: the clones hold HEAD, not the working tree.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The checkout to clone: the workspace under `tools/bazel run`, else the one this file is in.
ROOT = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or Path(__file__).resolve().parents[2])
sys.path.insert(0, str(ROOT))

from tools.bench.presubmit_bench import count, explain_misses, spawns  # noqa: E402
from tools.testing.http_cache import NginxCache  # noqa: E402

# A homefeed bundle (training, ONNX/TorchScript export, bundling: actions on the environment) and what the
# homefeed and serving tests build (generated protos, test stubs, runfiles). No images: their 3 GB
# environment layer would dominate the run and is measured in "Presubmit".
DEFAULT_TARGETS = ["//ml/homefeed:bundle", "//ml/homefeed:model_test", "//ml/homefeed:data_test",
                   "//ml/homefeed:train_test", "//ml/homefeed:serve_parity_test", "//ml/serving:all"]


def bazel(clone: Path, user_root: Path, *args: str, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([str(clone / "tools/bazel"), f"--output_user_root={user_root}", *args], cwd=clone,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    return time.perf_counter() - start, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS)
    parser.add_argument("--keep", type=Path, help="copy both execution logs here")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="cross-path-cache-"))
    clones = {"cold": scratch / "a" / "mlenv", "warm": scratch / "bb" / "ci-agent-7" / "work" / "checkout"}
    roots = {name: scratch / f"root-{name}" for name in clones}
    results, logs = {}, {}
    load_before = os.getloadavg()
    try:
        for clone in clones.values():
            clone.parent.mkdir(parents=True)
            subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
        with NginxCache(scratch / "nginx") as cache:
            env = {"MLENV_REMOTE_CACHE": cache.url}
            for name, clone in clones.items():
                logs[name] = scratch / f"{name}.json"
                elapsed, proc = bazel(clone, roots[name], "build", "--config=remote-cache",
                                      f"--execution_log_json_file={logs[name]}", *args.targets, env=env)
                if proc.returncode != 0:
                    sys.exit(f"{name} build in {clone} failed:\n{proc.stderr[-4000:]}")
                bazel(clone, roots[name], "shutdown", env=env)
                ran = spawns(logs[name])
                hits = sum(1 for s in ran if s.get("remoteCacheHit"))
                results[name] = (elapsed, len(ran), hits, count(r"INFO: (\d+ processes?: [^\n]*)", proc.stderr))
                print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
            size = cache.size_bytes()
        misses = explain_misses(logs["cold"], logs["warm"])
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for log in logs.values():
                shutil.copy(log, args.keep / log.name)
    finally:
        for name, clone in clones.items():
            if clone.exists():
                bazel(clone, roots[name], "shutdown", env={})
        subprocess.run(["chmod", "-R", "u+w", str(scratch)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)

    (cold_s, cold_n, _, cold_p), (warm_s, warm_n, warm_hits, warm_p) = results["cold"], results["warm"]
    rate = warm_hits / warm_n if warm_n else 0.0
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"`python3 tools/bench/cross_path_cache.py` at {head}, {when}; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after. Targets: `{' '.join(args.targets)}`. Clones at "
        f"`{clones['cold'].relative_to(scratch)}` and `{clones['warm'].relative_to(scratch)}` under one temp "
        f"folder, each with its own output base; nginx WebDAV on loopback ({size / 1e6:.0f} MB after the cold build).",
        "",
        "| build | wall time | spawns | served by the remote cache | processes (Bazel's summary) |",
        "|---|---|---|---|---|",
        f"| cold (empty cache, first path) | {cold_s:.1f} s | {cold_n} | - | {cold_p} |",
        f"| warm (second path, fresh output base) | {warm_s:.1f} s | {warm_n} | **{warm_hits} ({rate:.0%})** | {warm_p} |",
        "",
        *[f"- warm miss: {line}" for line in misses],
    ]
    print("\n".join(lines))
    return 0 if rate >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
