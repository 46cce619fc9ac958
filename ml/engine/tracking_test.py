"""Tracking never stops training: unreachable and dying MLflow servers, local log, replay."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest

from ml.engine.config import parse_config
from ml.engine.testing.toy import ToyConfig, ToyTask
from ml.engine.tracking import replay
from ml.engine.trainer import train


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(run_dir, *argv):
    return parse_config(ToyConfig, ["--batch-size", "64", "--log-every", "4", "--epochs", "1",
                                    "--set", f"run_dir={run_dir}", "--set", "run_name=t", *argv])


def metric_steps(client, run_id, key="train/loss"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_unreachable_server_training_finishes_and_keeps_everything_locally(tmp_path, capfd):
    dead = mlflow.MlflowClient(f"http://127.0.0.1:{free_port()}")
    result = train(config(tmp_path / "run"), ToyTask(), client=dead)
    assert result.global_step == 32 and result.run_id is None
    err = capfd.readouterr().err
    assert "MLflow tracking unavailable" in err and "training continues" in err
    log = tmp_path / "run" / "tracking.jsonl"
    assert f"every param, metric and artifact of this run is in {log}" in err
    assert "python -m ml.engine.tracking replay" in err
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines() if json.loads(l)["kind"] == "metrics"]
    assert steps.count(32) >= 1 and set(range(4, 33, 4)) <= set(steps)

    store = mlflow.MlflowClient(f"sqlite:///{tmp_path}/replayed.db")
    run_id = replay(log, store)
    run = store.get_run(run_id)
    assert run.data.params["batch_size"] == "64" and run.info.status == "FINISHED"
    assert metric_steps(store, run_id) == list(range(4, 33, 4))
    assert {a.path for a in store.list_artifacts(run_id)} >= {"config.json", "export", "loss_curve.png"}


class _KillServerAt(ToyTask):
    def __init__(self, server: subprocess.Popen, at_call: int) -> None:
        super().__init__()
        self.server, self.at_call = server, at_call

    def compute_loss(self, model, batch, device):
        if self.calls + 1 == self.at_call:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        return super().compute_loss(model, batch, device)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "mlflow", "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--default-artifact-root", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not become healthy in 90 s")
    yield url, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def test_server_dying_mid_run_loses_nothing(tmp_path, mlflow_server, capfd):
    url, proc = mlflow_server
    client = mlflow.MlflowClient(url)
    result = train(config(tmp_path / "run"), _KillServerAt(proc, at_call=17), client=client)
    assert result.global_step == 32 and result.run_id  # the run was created on the live server
    err = capfd.readouterr().err
    assert "MLflow tracking unavailable" in err
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path}/replayed.db")
    run_id = replay(tmp_path / "run" / "tracking.jsonl", store)
    assert metric_steps(store, run_id) == list(range(4, 33, 4))  # before and after the death
    assert store.get_metric_history(run_id, "eval/auc")
