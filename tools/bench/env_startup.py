"""Benchmark: does a Bazel test that imports torch start as fast as the same import outside Bazel?

Prints a markdown table for docs/benchmarks.md. Measures, in one run on this machine:
  1. `python -S -c "import torch"` with the locked tree on PYTHONPATH (no Bazel): the baseline;
  2. the same import through a built ml_py_test binary (Bazel's stub, runfiles, PYTHONPATH): the ratio;
  3. `bazel test` of ten such tests, uncached, in the sandbox: wall time and runfiles entries per test
     (the environment must reach each test through ONE entry, not ~60k).

usage: $(tools/bazel info output_base)/external/mlenv_python/python3 tools/bench/env_startup.py [--repeats N]
       [--peer-python /usr/bin/python3.11]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BAZEL = str(ROOT / "tools" / "bazel")
TARGETS = [f"//tools/bench:import_torch_{i}" for i in range(10)]


def bazel(*args: str, capture: bool = True) -> str:
    proc = subprocess.run([BAZEL, *args], cwd=ROOT, capture_output=capture, text=True)
    if proc.returncode != 0:
        sys.exit(f"bazel {' '.join(args)} failed:\n{proc.stderr if capture else ''}")
    return proc.stdout.strip() if capture else ""


def timed(cmd: list[str], repeats: int, **kwargs) -> list[float]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, **kwargs)
        runs.append(time.perf_counter() - start)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--peer-python", default="",
                        help="another CPython 3.11 (e.g. the host's) to time `import torch` against, interleaved "
                             "with the pinned one in this run")
    args = parser.parse_args()

    bazel("build", *TARGETS)
    output_base = Path(bazel("info", "output_base"))
    bin_dir = Path(bazel("info", "bazel-bin"))
    site = output_base / "external" / "pypi" / "site-packages"
    python = str(output_base / "external" / "mlenv_python" / "python3")  # the pinned interpreter's wrapper
    files_in_env = sum(len(files) for _, _, files in os.walk(site))

    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    plain = timed([python, "-S", "-c", "import torch"], args.repeats, env=env)
    if args.peer_python:  # interleaved, so both see the same machine load
        pinned_runs, peer_runs = [], []
        for _ in range(args.repeats):
            pinned_runs += timed([python, "-S", "-c", "import torch"], 1, env=env)
            peer_runs += timed([args.peer_python, "-S", "-c", "import torch"], 1, env=env)
    plain_pytest = timed([python, "-S", "-B", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tools/bench/import_torch_test.py"], args.repeats, env=env, cwd=ROOT)
    # The test binary with pytest replaced by a direct import: stub + runfiles + PYTHONPATH, no pytest.
    binary = bin_dir / "tools/bench/import_torch_0"
    runfiles = Path(str(binary) + ".runfiles")
    main = next(r for r in (runfiles / "mlenv", runfiles / "_main") if r.is_dir())  # WORKSPACE / Bzlmod name
    through_bazel = timed([str(binary), "--collect-only", "-q", "tools/bench/import_torch_test.py"], args.repeats,
                          cwd=main, env={"PATH": "/usr/bin:/bin", "RUNFILES_DIR": str(runfiles)})
    entries = sum(len(d) + len(f) for _, d, f in os.walk(runfiles))

    start = time.perf_counter()
    bazel("test", "--nocache_test_results", *TARGETS)
    ten_tests = time.perf_counter() - start

    med_plain, med_pytest, med_bazel = (statistics.median(x) for x in (plain, plain_pytest, through_bazel))
    print("| measure | value |\n|---|---|")
    print(f"| files in the locked environment (site-packages) | {files_in_env:,} |")
    print(f"| runfiles entries of one torch test | {entries} |")
    print(f"| `import torch`, plain python, locked tree on PYTHONPATH (median of {args.repeats}) | {med_plain:.2f} s |")
    if args.peer_python:
        pinned_med, peer_med = statistics.median(pinned_runs), statistics.median(peer_runs)
        print(f"| `import torch`: pinned interpreter / {args.peer_python} (interleaved, median of {args.repeats}) | "
              f"{pinned_med:.2f} s / {peer_med:.2f} s = {pinned_med / peer_med:.2f}x |")
    print(f"| pytest collecting the torch test, outside Bazel (median of {args.repeats}) | {med_pytest:.2f} s |")
    print(f"| the same through the Bazel test binary: stub, runfiles, ml_py_test runner (median of {args.repeats}) | {med_bazel:.2f} s |")
    print(f"| ratio Bazel / outside, same work (goal <= 1.5x) | {med_bazel / med_pytest:.2f}x |")
    print(f"| `bazel test` of 10 torch-importing tests, uncached, sandboxed, {os.cpu_count()} cores | {ten_tests:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
