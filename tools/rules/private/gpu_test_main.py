"""Entry point of every ml_gpu_test: gate the environment, lock GPUs, then run pytest.

1. Read the test's spec (written by the _gpu_test_spec rule): its label and how many GPUs it needs.
2. Count GPUs with nvidia-smi (no CUDA call yet: CUDA_VISIBLE_DEVICES is only read when CUDA initialises).
3. Take an exclusive lock per device (flock on $MLENV_GPU_LOCK_DIR/gpu<i>.lock, default /tmp/mlenv-gpu-locks),
   waiting while other tests hold them, so at most one test uses a GPU at a time whatever
   --local_test_jobs is; set CUDA_VISIBLE_DEVICES to the locked devices.
4. Run the environment gate (toolchains/cuda/gate.py). Any problem fails the test with what was found,
   what was expected and the fix: a GPU test never passes silently without a GPU.
5. Hand over to pytest_main with MLENV_TEST_DEVICE=cuda.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from toolchains.cuda import gate
from tools.rules.private import pytest_main

# One folder per machine, outside every sandbox, on purpose: the locks must be seen by all GPU tests.
LOCK_DIR = Path(os.environ.get("MLENV_GPU_LOCK_DIR", "/tmp/mlenv-gpu-locks"))  # noqa: S108


def count_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def lock_gpus(wanted: int, available: int, timeout_s: float) -> tuple[list[int], list]:
    """Blocks until `wanted` device locks are held; returns (device indices, open lock files)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        held, files = [], []
        for index in range(available):
            fh = open(LOCK_DIR / f"gpu{index}.lock", "w")  # noqa: SIM115 - held (locked) for the whole test
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            held.append(index)
            files.append(fh)
            if len(held) == wanted:
                return held, files
        for fh in files:
            fh.close()  # releases the lock: never hold a partial set while waiting (no deadlock between tests)
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {wanted} free GPU(s) of {available}")
        time.sleep(0.25)


def main() -> int:
    argv = sys.argv[1:]
    spec_path = argv.pop(0).removeprefix("--mlenv-gpu-spec=")
    spec = json.loads(Path(spec_path).read_text())
    target, wanted = spec["target"], spec["gpus"]
    available = count_gpus()
    locks = []
    if available >= wanted:
        timeout = float(os.environ.get("TEST_TIMEOUT", "900")) * 0.8
        devices, locks = lock_gpus(wanted, available, timeout)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        print(f"ml_gpu_test {target}: locked GPU(s) {os.environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr)
    problems = gate.check(gate.probe(), require_gpus=wanted)
    if problems:
        print(f"ml_gpu_test {target} FAILED: it needs {wanted} usable NVIDIA GPU(s) and this environment cannot "
              f"provide them:\n" + "\n".join(f"  - {p}" for p in problems)
              + "\n  (GPU tests run only under --config=gpu; without a GPU, run the default suite or the "
                "<name>_cpu variant of tests that have cpu_fallback = True)", file=sys.stderr)
        return 1
    os.environ["MLENV_TEST_DEVICE"] = "cuda"
    os.environ["MLENV_TEST_GPUS"] = str(wanted)
    sys.argv = [sys.argv[0], *argv]
    try:
        return pytest_main.main()
    finally:
        for fh in locks:
            fh.close()


if __name__ == "__main__":
    sys.exit(main())
