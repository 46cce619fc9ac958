"""//tools:mlflow and //tools:tensorboard on bad input, `--compare`, and the trainer's printed commands.

The binaries run as a user runs them (their Bazel launchers, $BUILD_WORKSPACE_DIRECTORY set to a scratch
workspace); the MLflow store is a real sqlite store with real runs. Servers that start successfully are
covered by browser_test.py.
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

MLFLOW = str(Path("tools/toolbox/mlflow").resolve())
TENSORBOARD = str(Path("tools/toolbox/tensorboard").resolve())


def tool(binary, workspace, *args, env=None, timeout=120):
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environ.update({"BUILD_WORKSPACE_DIRECTORY": str(workspace), **(env or {})})
    return subprocess.run([binary, *args], capture_output=True, text=True, env=environ, timeout=timeout,
                          cwd=os.getcwd())


def record_run(store_uri, name, params, metrics, experiment="toolbox"):
    client = mlflow.MlflowClient(store_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=name)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, values in metrics.items():
        for step, value in enumerate(values):
            client.log_metric(run.info.run_id, key, value, step=step)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An empty store and one with two runs, made once (creating an MLflow database takes seconds)."""
    folder = tmp_path_factory.mktemp("stores")
    empty = folder / "empty.db"
    mlflow.MlflowClient(f"sqlite:///{empty}").search_experiments()  # creates the database
    with_runs = folder / "runs.db"
    shutil.copy(empty, with_runs)
    uri = f"sqlite:///{with_runs}"
    a = record_run(uri, "small", {"lr": "0.001", "batch_size": "64"}, {"eval/auc": [0.70, 0.81]})
    b = record_run(uri, "wide", {"lr": "0.001", "batch_size": "256"}, {"eval/auc": [0.72, 0.86]})
    return empty, with_runs, a, b


def workspace_with(tmp_path, database):
    (tmp_path / ".mlenv").mkdir()
    shutil.copy(database, tmp_path / ".mlenv" / "mlflow.db")
    return tmp_path


@pytest.fixture
def workspace_with_runs(tmp_path, stores):
    _, with_runs, a, b = stores
    return workspace_with(tmp_path, with_runs), a, b


@pytest.fixture
def listening_socket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_mlflow_without_any_run_says_train_first(tmp_path):
    result = tool(MLFLOW, tmp_path)
    assert result.returncode == 2
    assert "no runs yet" in result.stderr and str(tmp_path / ".mlenv" / "mlflow.db") in result.stderr
    assert "tools/bazel run //ml/homefeed:train" in result.stderr


def test_mlflow_store_that_exists_but_holds_no_run(tmp_path, stores):
    result = tool(MLFLOW, workspace_with(tmp_path, stores[0]))
    assert result.returncode == 2 and "no runs yet in sqlite:///" in result.stderr


def test_mlflow_tracking_uri_that_does_not_answer(tmp_path, listening_socket):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # nothing listens once the probe is closed
    result = tool(MLFLOW, tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead}"})
    assert result.returncode == 2
    assert f"the tracking store http://127.0.0.1:{dead} (from MLFLOW_TRACKING_URI) does not answer" in result.stderr
    assert "start that server or fix or unset it" in result.stderr
    # A listener that never answers HTTP (accepts, then silence) is the same failure, after the timeout.
    result = tool(MLFLOW, tmp_path, "--tracking-uri", f"http://127.0.0.1:{listening_socket}")
    assert result.returncode == 2 and "(from --tracking-uri) does not answer" in result.stderr


def test_mlflow_port_taken(workspace_with_runs, listening_socket):
    workspace, _, _ = workspace_with_runs
    result = tool(MLFLOW, workspace, "--port", str(listening_socket))
    assert result.returncode == 2
    assert f"port {listening_socket} on 127.0.0.1 is already in use" in result.stderr
    assert "--port 0 for any free port" in result.stderr
    assert "starting the MLflow server" not in result.stderr  # refused before anything started


def test_mlflow_unknown_run(workspace_with_runs):
    workspace, _, _ = workspace_with_runs
    result = tool(MLFLOW, workspace, "--run", "no-such-run", "--port", "0")
    assert result.returncode == 2 and "no run with id or name 'no-such-run'" in result.stderr


def test_mlflow_bad_host(workspace_with_runs):
    workspace, _, _ = workspace_with_runs
    result = tool(MLFLOW, workspace, "--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 2 and "cannot listen on 192.0.2.1" in result.stderr


def test_compare_prints_params_and_final_metrics_side_by_side(workspace_with_runs):
    workspace, a, b = workspace_with_runs
    result = tool(MLFLOW, workspace, "--compare", "small", b, env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = {key: next(line for line in lines if f" {key} " in line) for key in ("batch_size", "lr", "eval/auc")}
    assert "* batch_size" in row["batch_size"] and "64" in row["batch_size"] and "256" in row["batch_size"]
    assert "* lr" not in row["lr"] and row["lr"].count("0.001") == 2
    assert "* eval/auc" in row["eval/auc"] and "0.81" in row["eval/auc"] and "0.86" in row["eval/auc"]
    assert a[:12] in result.stdout and b[:12] in result.stdout


def test_compare_refuses_an_ambiguous_name(workspace_with_runs):
    workspace, _, _ = workspace_with_runs
    record_run(f"sqlite:///{workspace / '.mlenv' / 'mlflow.db'}", "small", {}, {})
    result = tool(MLFLOW, workspace, "--compare", "small", "wide")
    assert result.returncode == 2 and "2 runs are named 'small'" in result.stderr


def test_tensorboard_without_runs_and_with_a_missing_logdir(tmp_path):
    result = tool(TENSORBOARD, tmp_path)
    assert result.returncode == 2 and f"no runs yet: {tmp_path / '.mlenv' / 'runs'} does not exist" in result.stderr
    result = tool(TENSORBOARD, tmp_path, "--logdir", "runs/typo")
    assert result.returncode == 2 and f"--logdir {tmp_path / 'runs' / 'typo'} does not exist" in result.stderr
    (tmp_path / "empty").mkdir()
    result = tool(TENSORBOARD, tmp_path, "--logdir", "empty")
    assert result.returncode == 2 and "no TensorBoard event files" in result.stderr


def test_tensorboard_port_taken(tmp_path, listening_socket):
    from ml.engine.tensorboard import ScalarWriter

    writer = ScalarWriter(tmp_path / "tb")
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    result = tool(TENSORBOARD, tmp_path, "--logdir", "tb", "--port", str(listening_socket))
    assert result.returncode == 2 and f"port {listening_socket} on 127.0.0.1 is already in use" in result.stderr


def test_trainer_lines_name_the_toolbox_targets_with_the_run(tmp_path):
    from ml.engine import toolbox

    lines = toolbox.closing_lines(tracking_uri="sqlite:////ws/.mlenv/mlflow.db", run_id="abc123", embedded=True,
                                  tensorboard_dir=Path("/ws/.mlenv/runs/p/r one/tensorboard"))
    assert shlex.split(lines[0].split(":", 1)[1]) == ["tools/bazel", "run", "//tools:mlflow", "--", "--run", "abc123"]
    assert shlex.split(lines[1].split(":", 1)[1]) == ["tools/bazel", "run", "//tools:tensorboard", "--", "--logdir",
                                                      "/ws/.mlenv/runs/p/r one/tensorboard"]
    server = toolbox.mlflow_command("http://mlflow:5000", "abc123", embedded=False)
    assert shlex.split(server)[-4:] == ["--tracking-uri", "http://mlflow:5000", "--run", "abc123"]
    offline = toolbox.closing_lines(tracking_uri="http://x", run_id=None, embedded=False, tensorboard_dir=tmp_path)
    assert "offline" in offline[0]
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "host_1.pt.trace.json").write_text("{}")
    with_trace = toolbox.closing_lines(tracking_uri="x", run_id="r", embedded=True, tensorboard_dir=tmp_path,
                                       profile_dir=tmp_path / "profile")
    assert "host_1.pt.trace.json" in with_trace[2] and "docs/toolbox.md" in with_trace[2]


def test_the_trainer_lines_module_imports_no_framework():
    code = "import sys, ml.engine.toolbox; print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code], capture_output=True,
                         text=True, check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "[]"
