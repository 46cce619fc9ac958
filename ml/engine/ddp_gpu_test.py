"""DDP across two processes: NCCL on two GPUs (ddp_gpu_test), gloo on CPU (ddp_gpu_test_cpu).

Each global batch is split across ranks by striding (toy task), so two processes with B rows each must
reach the parameters of one process with 2B rows.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

DEVICE = os.environ.get("MLENV_TEST_DEVICE", "cuda")
TOY = str(Path("ml/engine/testing/toy.py").resolve())


def run_toy(*argv):
    return subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), TOY, "--device", DEVICE, *argv],
                          capture_output=True, text=True, timeout=600)


def final_params(run_dir):
    from ml.engine.torch.state import load_model_state

    folder = Path(run_dir) / "checkpoints"
    return load_model_state(folder / (folder / "latest").read_text().strip())


def test_two_process_ddp_matches_one_process(tmp_path):
    common = ["--epochs", "1", "--no-shuffle", "--no-export", "--set", "rows=1024"]
    one = run_toy(*common, "--batch-size", "64", "--set", f"run_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_toy(*common, "--batch-size", "32", "--nproc", "2", "--set", f"run_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"2 x {DEVICE}" in two.stderr
    a, b = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4, rtol=1e-3), key
