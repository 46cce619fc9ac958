"""`//ml/homefeed:sweep` itself, with its own space file (ml/homefeed/sweep.yaml) on tiny data.

The toy tests (sweep_test.py) cover the mechanics; this one checks that the reference project's sweep
target and space file work as shipped: the space passes the check against HomefeedConfig, trials run the
real homefeed trainer, and retraining with the printed best settings reproduces the best click AUC.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

SWEEP = str(Path("ml/homefeed/sweep").absolute())
TRAIN = str(Path("ml/homefeed/train").absolute())
SPACE = str(Path("ml/homefeed/sweep.yaml").absolute())
TINY = ["train_samples=2048", "eval_samples=512", "num_shards=2", "num_users=300", "num_items=200", "seq_len=8",
        "batch_size=64", "seq_heads=2", "seq_layers=1", "mlp_dims=32,16", "epochs=2"]


def test_homefeed_sweep_runs_and_best_config_reproduces(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    cmd = [SWEEP, "--trainer", TRAIN, "--config-class", "ml.homefeed.train:HomefeedConfig", "--project", "homefeed",
           "--train-label", "//ml/homefeed:train", "--space", SPACE, "--storage", f"sqlite:///{tmp_path}/optuna.db",
           "--out", str(tmp_path / "sweep"), "--trials", "2", "--no-plots", *[x for s in TINY for x in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    study = optuna.load_study(study_name="homefeed-sweep", storage=f"sqlite:///{tmp_path}/optuna.db")
    done = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 2
    assert "retrain:   tools/bazel run //ml/homefeed:train -- " in proc.stdout
    assert f"-- --config {tmp_path / 'sweep' / 'best.yaml'}" in proc.stdout
    args = ["--config", str(tmp_path / "sweep" / "best.yaml")]  # the trainer reads the sweep's best config file
    run_dir = tmp_path / "retrain"
    retrain = subprocess.run([TRAIN, *args, "--set", f"run_dir={run_dir}"], capture_output=True, text=True,
                             timeout=1200, env=env)
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    auc = json.loads((run_dir / "metrics.json").read_text())["eval_metrics"]["click_auc"]
    assert auc == pytest.approx(study.best_value, abs=1e-9)
