"""Two real TensorFlow workers under MultiWorkerMirroredStrategy, configured from torchrun-style variables.

TensorFlow's gRPC servers listen on every interface, so both workers run inside a private network namespace
(`unshare -n`, loopback only) that this test creates. Checked: both ranks end with identical weights, and
every step's global loss equals plain full-batch gradient descent on both ranks' rows computed with numpy
(so gradients really were all-reduced, not trained apart).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ml.engine.tf.testing import mwms_worker as worker


def _run_two_workers() -> list[dict]:
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is missing: install util-linux and iproute2 (apt-get install util-linux "
                                 "iproute2) to run TensorFlow workers in a private network namespace")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "23450",
                "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(sys.path)})
    py = " ".join([sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", worker.__name__])
    script = ("ip link set lo up && "
              f"(RANK=0 LOCAL_RANK=0 {py} > w0.out 2> w0.err & RANK=1 LOCAL_RANK=1 {py} > w1.out 2> w1.err; "
              "s1=$?; wait $!; s0=$?; exit $((s0 | s1)))")
    workdir = os.environ.get("TEST_TMPDIR", "/tmp")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], env=env, cwd=workdir, timeout=540,
                          capture_output=True, text=True)
    logs = {r: Path(workdir, f"w{r}.err").read_text()[-3000:] for r in (0, 1)}
    assert proc.returncode == 0, f"workers failed ({proc.returncode}): {proc.stderr}\nrank 0:\n{logs[0]}\nrank 1:\n{logs[1]}"
    results = []
    for r in (0, 1):
        lines = [ln for ln in Path(workdir, f"w{r}.out").read_text().splitlines() if ln.startswith("RESULT ")]
        assert lines, f"rank {r} printed no result:\n{logs[r]}"
        results.append(json.loads(lines[-1][len("RESULT "):]))
    return results


def test_two_workers_all_reduce_and_agree():
    r0, r1 = _run_two_workers()
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["losses"] == r1["losses"]
    for a, b in zip(r0["final"], r1["final"], strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))

    # The same three steps as one process over both shards (numpy, float64).
    xs, ys = [], []
    for rank in (0, 1):
        rng = np.random.default_rng(rank)
        x = rng.standard_normal((worker.ROWS, 3)).astype(np.float32)
        xs.append(x)
        ys.append(x @ np.array([[1.0], [-2.0], [0.5]], np.float32))
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    w, b = np.array(r0["initial"][0]), np.array(r0["initial"][1])
    expected = []
    for _ in range(worker.STEPS):
        err = x @ w + b - y
        expected.append(float((err ** 2).sum() / len(x)))
        w, b = w - 0.1 * 2 * x.T @ err / len(x), b - 0.1 * 2 * err.sum(0) / len(x)
    np.testing.assert_allclose(r0["losses"], expected, rtol=1e-4)
    np.testing.assert_allclose(np.array(r0["final"][0]), w, rtol=1e-4, atol=1e-5)
