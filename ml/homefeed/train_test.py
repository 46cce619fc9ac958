"""The homefeed trainer end to end on tiny data: resume, tracking fallback, DDP on gloo, bf16, --help."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from ml.engine.config import parse_config
from ml.engine.export import load_exported, load_golden
from ml.engine.torch.state import load_model_state
from ml.engine.trainer import train
from ml.homefeed.train import HomefeedConfig, HomefeedTask

TRAIN = str(Path("ml/homefeed/train.py").resolve())
TINY = ["--batch-size", "128", "--log-every", "4", "--epochs", "1",
        "--set", "train_samples=4096", "--set", "eval_samples=1024", "--set", "num_shards=2",
        "--set", "num_users=400", "--set", "num_items=300", "--set", "seq_len=8",
        "--set", "embed_dim=16", "--set", "seq_heads=2", "--set", "seq_layers=1", "--set", "mlp_dims=32,16"]


def config(run_dir, *argv):
    return parse_config(HomefeedConfig, [*TINY, "--set", f"run_dir={run_dir}", "--set", "run_name=t", *argv])


def latest(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / (Path(run_dir) / "checkpoints" / "latest").read_text().strip()


def final_state(run_dir: Path) -> dict:
    return load_model_state(latest(run_dir))


class CrashAt(HomefeedTask):
    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call, self.calls = at_call, 0

    def compute_loss(self, net, batch, device):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt("simulated interruption")
        return super().compute_loss(net, batch, device)


@pytest.fixture(autouse=True)
def offline_tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def test_trains_beats_popularity_and_exports(tmp_path):
    result = train(config(tmp_path / "run", "--epochs", "2"), HomefeedTask())
    m = result.eval_metrics
    assert m["click_auc"] > m["baseline_click_auc"], m
    assert result.final_loss < 1.2 and result.export is not None
    # What MLflow's run page plots: eval metrics once per epoch, and the evaluation figures per head.
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert [p.step for p in client.get_metric_history(result.run_id, "eval/click_auc")] == [32, 64]
    assert 0 <= m["click_ece"] < 0.25 and 0 <= m["save_ece"] < 0.25, m
    figures = {a.path for a in client.list_artifacts(result.run_id, "figures")}
    assert figures == {"figures/reliability.png", "figures/roc.png"}, figures
    inputs, outputs = load_golden(result.export.folder)
    got = load_exported(result.export.folder)(*inputs)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, outputs, strict=True))


def test_interrupted_run_resumes_to_identical_parameters(tmp_path):
    argv = ("--checkpoint-every", "5", "--no-export", "--epochs", "2")
    straight = train(config(tmp_path / "a", *argv), HomefeedTask())
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b", *argv), CrashAt(at_call=43))  # mid-epoch 2 (32 steps per epoch)
    assert latest(tmp_path / "b").name == "ckpt-00000040"
    resumed = train(config(tmp_path / "b", *argv, "--resume"), HomefeedTask())
    assert resumed.global_step == straight.global_step == 64
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_unreachable_tracking_server_does_not_stop_training(tmp_path, monkeypatch, capfd):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    result = train(config(tmp_path / "run", "--max-steps", "8", "--no-export"), HomefeedTask())
    assert result.global_step == 8
    err = capfd.readouterr().err
    assert "MLflow tracking unavailable" in err and str(tmp_path / "run" / "tracking.jsonl") in err
    kinds = [json.loads(l)["kind"] for l in (tmp_path / "run" / "tracking.jsonl").read_text().splitlines()]
    assert kinds[0] == "start" and kinds.count("metrics") >= 3 and kinds[-1] == "end"


def test_bf16_path(tmp_path):
    result = train(config(tmp_path / "bf16", "--precision", "bf16", "--max-steps", "12"), HomefeedTask())
    assert torch.isfinite(torch.tensor(result.final_loss)) and result.export is not None


def _train_cli(*argv, env=None):
    return subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), TRAIN, *argv],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, **(env or {})))


def test_two_process_ddp_on_gloo_matches_single_process(tmp_path):
    common = [*TINY, "--epochs", "2", "--no-export", "--set", "dropout=0", "--set", "lr=0.003"]
    one = _train_cli(*common, "--batch-size", "256", "--set", f"run_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train_cli(*common, "--batch-size", "128", "--nproc", "2", "--set", f"run_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 x cpu" in two.stderr

    def metrics(stderr):
        line = next(l for l in stderr.splitlines() if l.startswith("mlenv: done at step"))
        return dict(part.strip().rsplit(" ", 1) for part in line.split(":", 1)[1].split(",")[1:])

    m1, m2 = metrics(one.stderr), metrics(two.stderr)
    assert abs(float(m1["click_auc"]) - float(m2["click_auc"])) < 0.03, (m1, m2)
    assert abs(float(m1["click_logloss"]) - float(m2["click_logloss"])) < 0.03, (m1, m2)
    assert "done at step 32" in one.stderr and "done at step 32" in two.stderr  # same global batch, same steps


def test_help_documents_every_flag():
    proc = _train_cli("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for flag in ("--data-dir", "--train-samples", "--embed-dim", "--seq-layers", "--cross-layers", "--precision",
                 "--nproc", "--resume", "--profile", "--export-format", "--set"):
        assert flag in text


def test_bad_config_fails_before_work(tmp_path):
    proc = _train_cli("--set", "embed_dim=30", "--set", "seq_heads=4", "--set", f"run_dir={tmp_path}")
    assert proc.returncode == 2
    assert "embed_dim (30) must be divisible by seq_heads (4)" in proc.stderr


def test_ray_data_input_refuses_outside_ray_train(tmp_path):
    proc = _train_cli("--set", "input=ray_data", "--set", f"run_dir={tmp_path}")
    assert proc.returncode != 0
    assert "input=ray_data needs a Ray Train worker" in proc.stderr and "--on ray" in proc.stderr, proc.stderr[-2000:]
    proc = _train_cli("--set", "input=ray", "--set", f"run_dir={tmp_path}")
    assert proc.returncode == 2
    assert "input must be one of files, ray_data; got 'ray'" in proc.stderr
