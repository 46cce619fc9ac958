"""Two sweep workers on one study, on sqlite and on a real PostgreSQL server started here on loopback.

Checked from the storage itself: exactly --trials trials end COMPLETE or PRUNED, no two of them (nor any
live trial) share a parameter set, and both workers ran trials. PostgreSQL is Debian's `postgresql`
package; initdb refuses root, so the server runs as the unprivileged `postgres` user in a folder it owns.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

SWEEP = str(Path("tools/sweep/toy_sweep").absolute())
TOY = str(Path("ml/engine/toy_train").absolute())
SPACE = str(Path("tools/sweep/testdata/toy_space.yaml").absolute())
PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str:
    found = sorted(PG_BIN.glob(f"*/bin/{name}"))
    if not found:
        pytest.fail(f"PostgreSQL's {name} is missing: install Debian's `postgresql` package "
                    f"(apt-get install postgresql); this test needs a real server and never skips")
    return str(found[-1])


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    user = "postgres"
    try:
        import pwd

        pwd.getpwnam(user)
    except KeyError:
        pytest.fail("no `postgres` user to run the server as (initdb refuses root); install Debian's postgresql")
    # Bazel's test PATH has no sbin folders.
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not runuser:
        pytest.fail("`runuser` (util-linux) is missing: it starts PostgreSQL as the unprivileged postgres user")
    as_user = [runuser, "-u", user, "--"]
    # A folder the unprivileged user can reach (the test's temp dir lives under root's 0700 home).
    folder = Path(tempfile.mkdtemp(prefix="mlenv-sweep-pg-", dir="/tmp"))
    data = folder / "data"
    started = False
    try:
        os.chmod(folder, 0o755)
        shutil.chown(folder, user)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "mlenv"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", f"-h 127.0.0.1 -p {port} -k {folder}",
                        "-l", str(folder / "server.log"), "-w", "start"], check=True, capture_output=True,
                       timeout=120)
        started = True
        psql = _pg_tool("psql")
        subprocess.run([*as_user, psql, "-h", "127.0.0.1", "-p", str(port), "-U", "mlenv", "-d", "postgres",
                        "-c", "CREATE DATABASE sweeps"], check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://mlenv@127.0.0.1:{port}/sweeps"
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                           timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


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
