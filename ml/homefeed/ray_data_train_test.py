"""Both homefeed trainers on 2 Ray Train workers fed by Ray Data (`--set input=ray_data`), on a real local Ray.

Ray listens on every interface, so the driver runs inside a private network namespace (`unshare -n`, loopback
only). Checked, for :train (the engine's Task loop) and :train_native (a hand-written loop): both ranks exit 0;
every training step's batch came from Ray Data (the batches Ray handed each rank equal the run's steps, the even
split's count); the run wrote its result with finite loss and metrics.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ml.data import ray_data
from ml.homefeed.testing import ray_data_driver

ROWS, BATCH = 3072, 64
TINY = [f"--batch-size={BATCH}", "--epochs=1", "--log-every=8", "--no-export", f"--set=train_samples={ROWS}",
        "--set=eval_samples=512", "--set=num_shards=2", "--set=num_users=300", "--set=num_items=200",
        "--set=seq_len=8", "--set=embed_dim=16", "--set=seq_heads=2", "--set=seq_layers=1", "--set=mlp_dims=32,16",
        "--set=input=ray_data"]


def test_homefeed_trains_from_ray_data():
    base = Path(tempfile.mkdtemp(prefix="rdh-", dir=os.environ.get("TEST_TMPDIR")))
    out = base / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), RAY_DATA_DISABLE_PROGRESS_BARS="1",
               RAY_USAGE_STATS_ENABLED="0", MLFLOW_TRACKING_URI=f"sqlite:///{base}/mlflow.db")
    py = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", ray_data_driver.__name__, str(out), "--",
          *TINY]
    try:
        proc = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *py], env=env,
                              timeout=700, capture_output=True, text=True, cwd=base)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the Ray driver did not finish in 700 s:\n{(exc.stderr or b'')[-4000:]}") from None
    assert proc.returncode == 0, f"Ray driver failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    steps = ray_data.batches_per_epoch(ROWS, BATCH, 2)
    for trainer in ray_data_driver.TRAINERS:
        for rank in (0, 1):
            got = json.loads((out / f"{trainer}-w{rank}.json").read_text())
            assert got == {"code": 0, "ray_batches": steps}, (trainer, rank, got)
        result = json.loads((out / trainer / "result.json").read_text())
        assert result["global_step"] == steps, trainer
        assert math.isfinite(result["final_loss"]), trainer
        assert 0.0 < result["eval_metrics"]["click_auc"] <= 1.0, trainer
    shutil.rmtree(base, ignore_errors=True)
