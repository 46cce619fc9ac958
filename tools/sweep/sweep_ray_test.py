"""`sweep --on ray --address local --parallel 2`: two sweep workers as Ray jobs on a 2-node local cluster.

The whole test runs in a private network namespace (it re-executes itself under `unshare -n` with only
loopback up): Ray listens on every interface. A real PostgreSQL server is started inside that namespace and
is the study's storage. Checked, from the storage, Ray's job records and MlflowClient:
- a sweep stopped with SIGTERM while its workers run trials exits 130, stops its jobs and leaves no process;
- the same command again resumes the study and ends with exactly --trials finished trials and no duplicate
  parameter sets; in each run the two worker jobs ran on the cluster's two nodes, and the finished trials
  were run by both workers;
- the MLflow parent run has every finished trial's run as a child; no process of the sweep is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

if os.environ.get("MLENV_RAY_TEST_NETNS") != "1":
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: install util-linux and iproute2 to run Ray in a private network "
                             "namespace")
    os.environ["MLENV_RAY_TEST_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                          sys.executable, *sys.orig_argv[1:]])

import mlflow  # noqa: E402
import optuna  # noqa: E402
import pytest  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from tools.sweep import pg_testing  # noqa: E402

SWEEP = str(Path("tools/sweep/toy_sweep").absolute())
TOY = str(Path("ml/engine/toy_train").absolute())
SPACE = str(Path("tools/sweep/testdata/toy_space.yaml").absolute())
TRIALS = 4
MARK = "MLENV_SWEEP_RAY_TEST_MARK"


def _leftovers(mark: str) -> list[str]:
    """Processes (other than this one) whose environment carries this test's mark: the sweep's descendants."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ.split(b"\0"):
            found.append(f"{pid}: {cmdline.decode(errors='replace')}")
    return found


def _no_leftovers(mark: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := _leftovers(mark)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, "processes of the sweep are still running:\n" + "\n".join(left)


def test_two_workers_on_a_local_ray_cluster(tmp_path):
    try:
        server = pg_testing.postgres_server()
        storage = server.__enter__()
    except pg_testing.PostgresMissing as exc:
        pytest.fail(str(exc))
    mark = uuid.uuid4().hex
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", **{MARK: mark})
    cmd = [SWEEP, "--trainer", TOY, "--config-class", "ml.engine.testing.toy:ToyConfig", "--project", "toy",
           "--space", SPACE, "--storage", storage, "--out", str(tmp_path / "sweep"), "--trials", str(TRIALS),
           "--parallel", "2", "--no-plots", "--heartbeat", "1", "--on", "ray", "--address", "local"]
    proc = None
    try:
        # 1. Stopped mid-run: SIGTERM once the first trial has finished in the storage.
        log1 = open(tmp_path / "first.log", "w+")  # noqa: SIM115 - read after the process ends
        proc = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 400  # ~40 s on an idle machine; minutes on a loaded one
        while True:
            assert proc.poll() is None, "the sweep ended before it was stopped:\n" + _read(log1)
            assert time.monotonic() < deadline, "no trial finished within 400 s:\n" + _read(log1)
            if _finished(storage) >= 1:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130, _read(log1)
        first = _read(log1)
        assert "stopping 2 worker job(s)" in first, first
        _no_leftovers(mark)
        stopped_at = _finished(storage)
        assert stopped_at < TRIALS, f"the first run was not stopped mid-sweep ({stopped_at} trials finished)"

        # 2. The same command resumes the study to exactly TRIALS finished trials.
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-6000:]
        _no_leftovers(mark)
        study = optuna.load_study(study_name="toy-toy_space", storage=storage)
        trials = study.get_trials()
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == TRIALS, [(t.number, t.state, t.user_attrs.get("sweep_message")) for t in trials]
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        keys = [json.dumps(t.params, sort_keys=True) for t in done]
        assert len(set(keys)) == len(keys), f"duplicate parameter sets: {keys}"
        for t in trials:
            if t.state == TrialState.FAIL:  # dropped duplicates/surplus, or the trials the SIGTERM interrupted
                assert t.user_attrs.get("sweep_fail_reason") in ("duplicate", "surplus", "orphaned", None), t.user_attrs

        # Both runs' jobs ran on two nodes, and the finished trials were run on both of them.
        jobs = [json.loads(line) for line in (tmp_path / "sweep" / "ray_jobs.jsonl").read_text().splitlines()]
        assert [j["status"] for j in jobs] == ["STOPPED", "STOPPED", "SUCCEEDED", "SUCCEEDED"], jobs
        for run in (jobs[:2], jobs[2:]):  # one cluster per run: its two workers' jobs on its two nodes
            assert len({j["driver_node_id"] for j in run} - {None}) == 2, f"two workers on one node: {run}"
        worker_of = {j["job_id"]: j["worker"] for j in jobs}
        ran_by = {worker_of.get(t.user_attrs.get("worker_job")) for t in done}
        assert ran_by == {0, 1}, f"the finished trials were not run by both workers (nodes): {ran_by}"

        # MLflow: every finished trial's run is a child of the sweep's parent run.
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        parent_id = study.user_attrs["mlflow_parent_run_id"]
        assert client.get_run(parent_id).info.status == "FINISHED"
        for t in done:
            run = client.get_run(t.user_attrs["run_id"])
            assert run.data.tags.get("mlflow.parentRunId") == parent_id, (t.number, run.data.tags)
            assert run.data.tags.get("mlenv.sweep.trial") == str(t.number)
        assert f"{TRIALS} finished trials" in proc.stdout, proc.stdout
    finally:
        for rdb in _STORAGES.values():
            rdb.engine.dispose()
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:  # a failed check: stop the sweep's group
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.__exit__(None, None, None)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _finished(storage: str) -> int:
    """Finished trials in the study; one connection pool for all polls (not one per poll)."""
    rdb = _STORAGES.setdefault(storage, optuna.storages.RDBStorage(storage))
    try:
        study = optuna.load_study(study_name="toy-toy_space", storage=rdb)
    except KeyError:
        return 0
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def _read(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-6000:]
