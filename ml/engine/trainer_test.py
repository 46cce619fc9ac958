"""The engine loop on a real (toy) task: learning, MLflow records, exact resume, precision, DDP on gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from ml.engine.config import parse_config
from ml.engine.errors import PrecisionError
from ml.engine.testing.toy import ToyConfig, ToyTask
from ml.engine.torch.state import load_model_state
from ml.engine.trainer import train

TOY = str(Path("ml/engine/testing/toy.py").resolve())


def config(tmp_path, *argv):
    return parse_config(ToyConfig, ["--batch-size", "64", "--log-every", "4", "--set", f"run_dir={tmp_path}",
                                    "--set", "run_name=t", *argv])


def latest(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / (Path(run_dir) / "checkpoints" / "latest").read_text().strip()


def final_params(run_dir: Path) -> dict:
    return load_model_state(latest(run_dir))


def test_learns_and_records_everything_in_mlflow(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    result = train(config(tmp_path / "run", "--epochs", "3"), ToyTask(), client=client)
    assert result.global_step == 3 * (2048 // 64)
    assert result.eval_metrics["auc"] > 0.9, result.eval_metrics
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["precision"] == "fp32"
    assert run.data.tags["mlenv.project"] == "toy" and "mlenv.lock_digest" in run.data.tags
    losses = [m.value for m in client.get_metric_history(result.run_id, "train/loss")]
    assert len(losses) == result.global_step // 4 and losses[-1] < losses[0]
    assert client.get_metric_history(result.run_id, "eval/auc")
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.json", "loss_curve.png", "checkpoint", "export"} <= artifacts
    exported = {a.path for a in client.list_artifacts(result.run_id, "export")}
    assert {"export/model.pt", "export/signature.json", "export/golden.npz"} <= exported
    assert list((result.tensorboard_dir).glob("events.out.tfevents.*"))


def test_interrupted_run_resumes_to_identical_parameters(tmp_path):
    argv = ("--epochs", "2", "--checkpoint-every", "5", "--set", "dropout=0.3", "--no-export")
    straight = train(config(tmp_path / "straight", *argv), ToyTask())
    with pytest.raises(RuntimeError, match="injected failure"):
        train(config(tmp_path / "crashed", *argv, "--set", "fail_at_step=48"), ToyTask())
    assert latest(tmp_path / "crashed").name == "ckpt-00000045"  # the last checkpoint before the crash at step 48
    resumed = train(config(tmp_path / "crashed", *argv, "--resume"), ToyTask())
    assert resumed.global_step == straight.global_step == 64
    a, b = final_params(straight.run_dir), final_params(resumed.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(config(tmp_path / "r", "--max-steps", "6", "--no-export"), ToyTask())
    from ml.engine.errors import CheckpointError

    with pytest.raises(CheckpointError, match="different config"):
        train(config(tmp_path / "r", "--resume", "--lr", "0.5", "--no-export"), ToyTask())


def test_bf16_autocast_on_cpu_trains(tmp_path):
    result = train(config(tmp_path / "bf16", "--precision", "bf16", "--epochs", "2", "--no-export"), ToyTask())
    assert result.final_loss == result.final_loss and result.final_loss < 0.6  # finite and learning
    assert result.eval_metrics["auc"] > 0.85


def test_fp16_on_cpu_is_refused_with_the_alternative(tmp_path):
    with pytest.raises(PrecisionError, match="needs a CUDA device.*use --precision bf16"):
        train(config(tmp_path / "fp16", "--precision", "fp16", "--device", "cpu"), ToyTask())


def _run_toy(*argv, env=None):
    return subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), TOY, *argv],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, **(env or {})))


def test_two_process_ddp_on_gloo_matches_single_process(tmp_path):
    common = ["--epochs", "1", "--no-shuffle", "--no-export", "--log-every", "8", "--set", "rows=1024"]
    single = _run_toy(*common, "--batch-size", "64", "--set", f"run_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr
    ddp = _run_toy(*common, "--batch-size", "32", "--nproc", "2", "--set", f"run_dir={tmp_path / 'two'}")
    assert ddp.returncode == 0, ddp.stderr
    assert "2 x cpu" in ddp.stderr
    one, two = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), (key, (one[key] - two[key]).abs().max())
    # only rank 0 wrote the run: one config, one local tracking log
    assert json.loads((tmp_path / "two" / "config.json").read_text())["nproc"] == 2


def test_failed_worker_stops_the_group_with_its_exit_code(tmp_path):
    proc = _run_toy("--nproc", "2", "--batch-size", "32", "--set", "fail_at_step=3", "--set", f"run_dir={tmp_path}")
    assert proc.returncode != 0
    assert "exited with code" in proc.stderr and "injected failure" in proc.stderr


def test_bad_flag_fails_before_any_work(tmp_path):
    proc = _run_toy("--set", "hiden=3", "--set", f"run_dir={tmp_path}")
    assert proc.returncode == 2
    assert "unknown config key 'hiden'; did you mean hidden" in proc.stderr
    assert not (tmp_path / "config.json").exists()


class _NanAt(ToyTask):
    def compute_loss(self, model, batch, device):
        loss, parts, n = super().compute_loss(model, batch, device)
        return (loss * float("nan") if self.calls == 6 else loss), parts, n


def test_non_finite_loss_stops_the_run_naming_the_steps(tmp_path):
    from ml.engine.errors import EngineError

    with pytest.raises(EngineError, match=r"loss became nan between steps 5 and 8 \(epoch 0\); lower --lr"):
        train(config(tmp_path / "nan", "--no-export"), _NanAt())


def test_profile_writes_a_trace_tensorboard_and_perfetto_can_read(tmp_path):
    result = train(config(tmp_path / "prof", "--profile", "--profile-steps", "3", "--no-export"), ToyTask())
    traces = list((result.run_dir / "profile").glob("*.pt.trace.json*"))
    assert traces, list((result.run_dir / "profile").iterdir())
    import json as _json

    events = _json.loads(traces[0].read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("ProfilerStep#") for e in events)
