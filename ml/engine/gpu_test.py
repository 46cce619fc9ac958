"""Engine paths that only exist on NVIDIA GPUs: fp16 autocast with a grad scaler, and DDP over NCCL.

Run with `tools/bazel test --config=gpu //ml/...`. `ddp_gpu_test_cpu` runs the same DDP test on gloo.
"""

import os
from pathlib import Path

import pytest
import torch

from ml.engine.config import parse_config
from ml.engine.testing.toy import ToyConfig, ToyTask
from ml.engine.trainer import train

DEVICE = os.environ.get("MLENV_TEST_DEVICE", "cuda")
TOY = str(Path("ml/engine/testing/toy.py").resolve())


def config(run_dir, *argv):
    return parse_config(ToyConfig, ["--batch-size", "64", "--log-every", "4", "--device", DEVICE,
                                    "--set", f"run_dir={run_dir}", "--set", "run_name=t", *argv])


def final_params(run_dir):
    from ml.engine.torch.state import load_model_state

    folder = Path(run_dir) / "checkpoints"
    return load_model_state(folder / (folder / "latest").read_text().strip())


def test_amp_fp16_with_grad_scaler_trains_on_cuda(tmp_path):
    assert DEVICE == "cuda" and torch.cuda.is_available()
    fp16 = train(config(tmp_path / "fp16", "--precision", "fp16", "--epochs", "2", "--no-export"), ToyTask())
    fp32 = train(config(tmp_path / "fp32", "--precision", "fp32", "--epochs", "2", "--no-export"), ToyTask())
    assert torch.isfinite(torch.tensor(fp16.final_loss))
    assert fp16.eval_metrics["auc"] > 0.85
    assert abs(fp16.final_loss - fp32.final_loss) < 0.05, (fp16.final_loss, fp32.final_loss)
    state = torch.load(fp16.checkpoint / "state.pt", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0  # the scaler ran and was checkpointed


def test_bf16_autocast_on_cuda(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16")
    result = train(config(tmp_path / "bf16", "--precision", "bf16", "--epochs", "2", "--no-export"), ToyTask())
    assert result.eval_metrics["auc"] > 0.85
