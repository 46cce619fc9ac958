"""homefeed's real trainer through `:launch --on local` on 2 gloo ranks (tiny data): it trains to the end
of the epoch, a SIGTERM mid-run stops both ranks, and a relaunch with --resume under the same run name
continues from the last checkpoint to the same final parameters as an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import torch

from ml.engine.checkpoint import Checkpoint, CheckpointStore
from ml.engine.torch.state import load_model_state

LAUNCH = "tools/launch/homefeed_launch"
TINY = ["--batch-size", "128", "--log-every", "4", "--epochs", "1", "--no-export", "--checkpoint-every", "4",
        "--set", "train_samples=4096", "--set", "eval_samples=512", "--set", "num_shards=2",
        "--set", "num_users=400", "--set", "num_items=300", "--set", "seq_len=8",
        "--set", "embed_dim=16", "--set", "seq_heads=2", "--set", "seq_layers=1", "--set", "mlp_dims=32,16",
        "--set", "dropout=0"]
STEPS = 4096 // (128 * 2)


def launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([LAUNCH, "--on", "local", "--nproc-per-node", "2", "--", *TINY,
                             "--run-name", run_dir.name, "--set", f"run_dir={run_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(run_dir.parent)})


def tracking_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def latest(run_dir: Path) -> Checkpoint | None:
    return CheckpointStore(run_dir / "checkpoints", keep=1).latest(check_config=False)


def final_params(run_dir: Path) -> dict:
    return load_model_state(latest(run_dir).path)


def test_two_ranks_train_and_a_sigtermed_run_resumes_to_the_same_state(tmp_path):
    whole = launch(tmp_path / "whole")
    log = whole.communicate(timeout=900)[0]
    assert whole.returncode == 0, log[-3000:]
    assert "2 x cpu" in log and f"done at step {STEPS}" in log, log[-3000:]

    cut = tmp_path / "cut"
    first = launch(cut)
    deadline = time.monotonic() + 600
    while latest(cut) is None:
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    log = first.communicate(timeout=120)[0]
    assert first.returncode == 128 + signal.SIGTERM, log[-3000:]
    stopped_at = latest(cut).step
    assert 0 < stopped_at < STEPS, "the run finished before the SIGTERM; nothing was resumed"

    again = launch(cut, "--resume")
    log = again.communicate(timeout=900)[0]
    assert again.returncode == 0, log[-3000:]
    assert f"done at step {STEPS}" in log
    a, b = final_params(tmp_path / "whole"), final_params(cut)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    # One MLflow run per launch name: the resumed launch continued the interrupted run, and both finished.
    client = mlflow.MlflowClient(tracking_uri(tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("homefeed").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["cut", "whole"]
    assert all(r.info.status == "FINISHED" and r.data.metrics and r.data.params for r in runs)
