"""__project__ on the accelerator: forward, backward, mixed precision and export from a device model.

`gpu_test` runs on CUDA under --config=gpu; `gpu_test_cpu` runs the same file on CPU in the default suite.
"""

import os

import pytest
import torch

from ml.__project__ import data, model
from ml.engine.export import export_model

DEVICE = torch.device(os.environ.get("MLENV_TEST_DEVICE", "cuda"))


@pytest.fixture(scope="module")
def batch():
    rows = data.generate(256, split="eval")
    return torch.from_numpy(rows["cat"]).to(DEVICE), torch.from_numpy(rows["dense"]).to(DEVICE)


def build() -> model.ClickModel:
    torch.manual_seed(0)
    return model.ClickModel(model.ModelConfig(cardinalities=data.CARDINALITIES, num_dense=data.NUM_DENSE)).to(DEVICE)


def test_forward_backward_on_device(batch):
    net = build()
    logit = net(*batch)
    assert logit.device.type == DEVICE.type and logit.shape == (256,)
    logit.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


# fp16 autocast is a CUDA path: the CPU variant does not collect it at all, rather than skip it (a skip fails
# under --config=ci).
@pytest.mark.parametrize("dtype", [torch.bfloat16] + ([torch.float16] if DEVICE.type == "cuda" else []))
def test_autocast_matches_fp32(batch, dtype):
    net = build().eval()
    with torch.no_grad():
        ref = net(*batch)
        with torch.autocast(DEVICE.type, dtype=dtype):
            low = net(*batch)
    assert torch.isfinite(low).all()
    assert (torch.sigmoid(ref) - torch.sigmoid(low.float())).abs().max() < 0.05


def test_export_from_device_model(batch, tmp_path):
    result = export_model(build(), tuple(t[:8] for t in batch), input_names=list(model.INPUT_NAMES),
                          output_names=list(model.OUTPUT_NAMES), folder=tmp_path)
    assert result.max_abs_diff < 1e-4
