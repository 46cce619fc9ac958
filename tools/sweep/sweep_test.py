"""The sweep command end to end on the toy trainer: bad inputs, pruning, MLflow structure, best config, resume.

Every test runs the real `:toy_sweep` binary (which runs the real toy trainer per trial) against a real
sqlite Optuna storage and a real MLflow sqlite store in the test's temp dir; results are read back with
Optuna and MlflowClient, never from the sweep's own printout alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

SWEEP = str(Path("tools/sweep/toy_sweep").absolute())
TOY = str(Path("ml/engine/toy_train").absolute())
SPACE = Path("tools/sweep/testdata/toy_space.yaml").absolute()
TOTAL_STEPS = 4 * (512 // 32)


def sweep_cmd(tmp: Path, *extra: str, space: Path = SPACE) -> list[str]:
    return [SWEEP, "--trainer", TOY, "--config-class", "ml.engine.testing.toy:ToyConfig", "--project", "toy",
            "--train-label", "//ml/engine:toy_train", "--space", str(space), "--storage",
            f"sqlite:///{tmp}/optuna.db", "--out", str(tmp / "sweep"), "--heartbeat", "1", *extra]


def env_for(tmp: Path) -> dict:
    return dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")


def run_sweep(tmp: Path, *extra: str, space: Path = SPACE, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(tmp, *extra, space=space), capture_output=True, text=True, timeout=timeout,
                          env=env_for(tmp))


def load(tmp: Path, name: str = "toy-toy_space") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/optuna.db")


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def space_with(tmp: Path, **changes) -> Path:
    raw = yaml.safe_load(SPACE.read_text())
    for key, value in changes.items():
        if key.startswith("param_"):
            raw["params"][key[len("param_"):]] = value
        else:
            raw[key] = value
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# -- bad input: fails before any trial, naming what and the fix ----------------------------------------------
@pytest.mark.parametrize("case", ["unknown_param", "out_of_range", "int_range_on_float", "unreachable_storage",
                                  "unreported_metric"])
def test_bad_input_fails_before_any_trial(tmp_path, case):
    space, extra, expect = SPACE, [], []
    if case == "unknown_param":
        space = space_with(tmp_path, param_hiden={"type": "int", "low": 4, "high": 8})
        expect = ["params.hiden is not a key of ToyConfig", "did you mean hidden"]
    elif case == "out_of_range":
        space = space_with(tmp_path, param_dropout={"type": "float", "low": 0.0, "high": 1.5})
        expect = ["params.dropout", "1.5 is outside what ToyConfig accepts", "dropout must be in [0, 1)",
                  "narrow the range"]
    elif case == "int_range_on_float":
        space = space_with(tmp_path, param_dropout={"type": "int", "low": 0, "high": 1})
        expect = ["params.dropout is an int range but ToyConfig.dropout is float", "use type: float"]
    elif case == "unreachable_storage":
        with socket.socket() as s:  # a loopback port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = sweep_cmd(tmp_path)
        cmd[cmd.index("--storage") + 1] = f"postgresql+psycopg://mlenv@127.0.0.1:{port}/sweeps"
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env_for(tmp_path))
        assert proc.returncode == 2, proc.stderr
        assert f"cannot use the storage postgresql+psycopg://mlenv@127.0.0.1:{port}/sweeps" in proc.stderr
        assert "Start the database (or fix the URL)" in proc.stderr
        assert not (tmp_path / "sweep").exists()
        return
    elif case == "unreported_metric":
        space = space_with(tmp_path, metric="eval/click_auc")
        expect = ["the trainer never reports 'eval/click_auc'", "eval/auc", "set metric: in"]
    proc = run_sweep(tmp_path, "--trials", "2", *extra, space=space)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for text in expect:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "sweep" / "trials").exists(), "a trial started despite the bad input"
    if case != "unreported_metric":
        assert not (tmp_path / "sweep").exists() and not (tmp_path / "optuna.db").exists()


# -- one sweep, read back every way ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pruning")
    started = time.monotonic()
    proc = run_sweep(tmp, "--trials", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-5000:]
    return tmp, proc, time.monotonic() - started


def test_pruning_prunes(pruned_sweep):
    tmp, proc, _ = pruned_sweep
    study = load(tmp)
    done = finished(study)
    assert len(done) == 5, [(t.number, t.state) for t in study.get_trials()]
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned: " + proc.stdout
    for t in pruned:
        # The trainer really stopped early: its own log ends before the last step and has no end record.
        records = [json.loads(x) for x in (Path(t.user_attrs["run_dir"]) / "tracking.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if r["kind"] == "metrics"]
        assert max(steps) < TOTAL_STEPS, f"pruned trial {t.number} ran to the end (step {max(steps)})"
        # The engine checkpoints and ends a SIGTERM'd run as KILLED, never FINISHED.
        assert [r["status"] for r in records if r["kind"] == "end"] in ([], ["KILLED"]), records[-3:]
        assert max(t.intermediate_values) < TOTAL_STEPS
    for t in done:
        if t.state == TrialState.COMPLETE:
            assert max(t.intermediate_values) == TOTAL_STEPS


def test_mlflow_parent_and_children(pruned_sweep):
    tmp, _, _ = pruned_sweep
    study = load(tmp)
    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name(study.study_name)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == "eval/auc" and parent.data.params["space.lr"].startswith("float[")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    trials = {int(r.data.tags["mlenv.sweep.trial"]): r for r in children if "mlenv.sweep.trial" in r.data.tags}
    assert sorted(trials) == sorted(t.number for t in finished(study))
    for t in finished(study):
        run = trials[t.number]
        assert run.info.run_id == t.user_attrs["run_id"]
        for key, value in t.params.items():
            assert float(run.data.params[key]) == pytest.approx(float(value))
        if t.state == TrialState.PRUNED:
            assert run.info.status == "KILLED" and run.data.tags["mlenv.sweep.state"] == "PRUNED"
        else:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["eval/auc"] == pytest.approx(t.value)
    artifacts = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert {"plots/history.png", "plots/importances.png", "plots/parallel_coordinates.png"} <= artifacts
    assert parent.data.metrics["best/eval/auc"] == pytest.approx(study.best_value)


def test_best_config_reproduces_best_trial(pruned_sweep):
    tmp, proc, _ = pruned_sweep
    study = load(tmp)
    summary = json.loads((tmp / "sweep" / "summary.json").read_text())
    assert summary["best_trial"] == study.best_trial.number
    best_yaml = yaml.safe_load((tmp / "sweep" / "best.yaml").read_text())
    for key, value in study.best_params.items():
        assert best_yaml[key] == value
    assert str(tmp / "sweep" / "best.yaml") in proc.stdout and "plots/history.png" in proc.stdout
    args = (tmp / "sweep" / "best_args.txt").read_text().split()
    run_dir = tmp / "retrain"
    retrain = subprocess.run([TOY, *args, "--set", f"run_dir={run_dir}"], capture_output=True, text=True,
                             timeout=600, env=env_for(tmp))
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval_metrics"]["auc"] == pytest.approx(study.best_value, abs=1e-9)


# -- resume: SIGKILL the whole sweep mid-trial, rerun the same command -------------------------------------------
def test_resume_after_sigkill_continues_without_double_count(tmp_path):
    cmd = sweep_cmd(tmp_path, "--trials", "2", "--no-plots")
    space = yaml.safe_load(SPACE.read_text())
    space["pruner"] = "none"  # every trial runs to the end: the count checks below are exact
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    cmd[cmd.index("--space") + 1] = str(tmp_path / "space.yaml")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env_for(tmp_path),
                            start_new_session=True)
    killed_log = tmp_path / "sweep" / "trials" / "0001" / "tracking.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # trial 0 done and trial 1 training (it has logged a metric)
        if killed_log.exists() and '"kind": "metrics"' in killed_log.read_text():
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("trial 1 never started")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = load(tmp_path, "toy-space").get_trials()
    assert [t.state for t in before[:2]] == [TrialState.COMPLETE, TrialState.RUNNING]
    first_run_id = before[0].user_attrs["run_id"]
    time.sleep(1)
    trainer_alive = subprocess.run(["pgrep", "-f", f"run_dir={tmp_path}/sweep/trials/0001"], capture_output=True)
    assert trainer_alive.returncode == 1, "the killed sweep left its trainer running"

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env_for(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr[-5000:]
    trials = load(tmp_path, "toy-space").get_trials()
    done = finished(trials_study := load(tmp_path, "toy-space"))
    assert len(done) == 2, [(t.number, t.state, t.user_attrs) for t in trials_study.get_trials()]
    assert trials[0].state == TrialState.COMPLETE and trials[0].user_attrs["run_id"] == first_run_id, \
        "the completed trial was rerun"
    assert trials[1].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].params == trials[1].params and retries[0].state == TrialState.COMPLETE
    keys = [json.dumps(t.params, sort_keys=True) for t in done]
    assert len(set(keys)) == 2
    # Trial 0's run folder was not trained again: one start record only.
    log0 = (tmp_path / "sweep" / "trials" / "0000" / "tracking.jsonl").read_text()
    assert log0.count('"kind": "start"') == 1
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(trials[1].user_attrs["run_id"]).info.status == "KILLED"


def test_cmaes_sampler_is_available_and_samples_the_space(tmp_path):
    from tools.sweep.space import load_space

    space = load_space(space_with(tmp_path, sampler="cmaes", params={
        "lr": {"type": "float", "low": 1.0e-4, "high": 0.3, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5}}))
    sampler = space.make_sampler(0)
    assert isinstance(sampler, optuna.samplers.CmaEsSampler)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -abs(t.suggest_float("lr", 1e-4, 0.3, log=True) - 0.01)
                   - t.suggest_float("dropout", 0.0, 0.5), n_trials=12)
    assert len(study.trials) == 12 and study.best_value > -0.5


# -- objective: best_epoch ---------------------------------------------------------------------------------------
def test_best_epoch_objective_ranks_by_peak_and_retrains_to_it(tmp_path):
    space = space_with(tmp_path, objective="best_epoch", pruner="none",
                       param_lr={"type": "float", "low": 0.05, "high": 0.3, "log": True})
    proc = run_sweep(tmp_path, "--trials", "2", "--no-plots", space=space)
    assert proc.returncode == 0, proc.stderr[-5000:]
    study = load(tmp_path, "toy-space")
    for t in finished(study):
        log = Path(t.user_attrs["run_dir"]) / "tracking.jsonl"
        raw = [json.loads(line) for line in log.read_text().splitlines()]
        per_epoch = [e["metrics"]["eval/auc"] for e in raw if e.get("kind") == "metrics" and "eval/auc" in e["metrics"]]
        assert len(per_epoch) == 4, per_epoch
        # The pruner saw the best value so far; the trial's value is its peak, at the epoch recorded.
        reported = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        assert reported == [max(per_epoch[: i + 1]) for i in range(4)]
        assert t.value == max(per_epoch)
        assert t.user_attrs["best_epoch"] == per_epoch.index(max(per_epoch)) + 1
    best = study.best_trial
    best_yaml = yaml.safe_load((tmp_path / "sweep" / "best.yaml").read_text())
    assert int(best_yaml["epochs"]) == best.user_attrs["best_epoch"]
    args = (tmp_path / "sweep" / "best_args.txt").read_text().split()
    assert [a for a in args if a.startswith("epochs=")] == [f"epochs={best.user_attrs['best_epoch']}"], args
    run_dir = tmp_path / "retrain"
    retrain = subprocess.run([TOY, *args, "--set", f"run_dir={run_dir}"], capture_output=True, text=True,
                             timeout=600, env=env_for(tmp_path))
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval_metrics"]["auc"] == pytest.approx(best.value, abs=1e-9)
