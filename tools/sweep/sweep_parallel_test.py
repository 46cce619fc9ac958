"""Two sweep workers on one study, on sqlite and on a real PostgreSQL server started here on loopback.

Checked from the storage itself: exactly --trials trials end COMPLETE or PRUNED, no two of them (nor any
live trial) share a parameter set, and both workers ran trials. PostgreSQL is Debian's `postgresql`
package, started by tools/sweep/pg_testing.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tools.sweep import pg_testing

SWEEP = str(Path("tools/sweep/toy_sweep").absolute())
TOY = str(Path("ml/engine/toy_train").absolute())
SPACE = str(Path("tools/sweep/testdata/toy_space.yaml").absolute())


@pytest.fixture(scope="module")
def postgres():
    try:
        with pg_testing.postgres_server() as url:
            yield url
    except pg_testing.PostgresMissing as exc:
        pytest.fail(str(exc))


def two_workers(tmp: Path, storage: str) -> optuna.Study:
    cmd = [SWEEP, "--trainer", TOY, "--config-class", "ml.engine.testing.toy:ToyConfig", "--project", "toy",
           "--space", SPACE, "--storage", storage, "--out", str(tmp / "sweep"), "--trials", "4", "--parallel", "2",
           "--no-plots", "--heartbeat", "2"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    study = optuna.load_study(study_name="toy-toy_space", storage=storage)
    trials = study.get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4, [(t.number, t.state, t.user_attrs.get("sweep_message")) for t in trials]
    live = [t for t in trials if t.state != TrialState.FAIL]
    assert live == done, "trials left running or waiting"
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(keys)) == len(keys), f"duplicate parameter sets: {keys}"
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, f"the trials ran on {workers}, not on two workers"
    # Unexpected failures would mean the workers stepped on each other; only dropped duplicates/surplus may fail.
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("sweep_fail_reason") in ("duplicate", "surplus"), t.user_attrs
    return study


def test_two_workers_on_sqlite(tmp_path):
    two_workers(tmp_path, f"sqlite:///{tmp_path}/optuna.db")


def test_two_workers_on_postgresql(tmp_path, postgres):
    two_workers(tmp_path, postgres)
