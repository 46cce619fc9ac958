"""homefeed on the accelerator: forward, backward, mixed precision and export from a device model.

`gpu_test` runs on CUDA under --config=gpu; `gpu_test_cpu` runs the same file on CPU in the default suite.
"""

import os

import pytest
import torch

from ml.engine.export import export_model
from ml.homefeed import data, model

DEVICE = torch.device(os.environ.get("MLENV_TEST_DEVICE", "cuda"))
WORLD = data.SyntheticConfig(num_users=300, num_items=200, seq_len=8)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    files = data.generate_shards(folder, WORLD, 512, 1)
    return {k: v.to(DEVICE) for k, v in next(iter(data.ParquetStream(files, 256, shuffle=False))).items()}


def build():
    torch.manual_seed(0)
    cfg = model.HomefeedModelConfig(**data.model_config_kwargs(WORLD), embed_dim=16, seq_heads=2, seq_layers=1)
    return model.HomefeedRanker(cfg).to(DEVICE)


def test_forward_backward_on_device(batch):
    net = build()
    click, save = net(*model.batch_inputs(batch))
    assert click.device.type == DEVICE.type and click.shape == (256,)
    loss, _ = model.multitask_loss(click, save, batch["click"], batch["save"])
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


# fp16 autocast is a CUDA path (the engine refuses it on CPU): the CPU variant does not collect it at all,
# rather than skip it (a skip fails under --config=ci; tools/rules/private/pytest_main.py).
@pytest.mark.parametrize("dtype", [torch.bfloat16] + ([torch.float16] if DEVICE.type == "cuda" else []))
def test_autocast_matches_fp32(batch, dtype):
    net = build().eval()
    with torch.no_grad():
        ref = net(*model.batch_inputs(batch))
        with torch.autocast(DEVICE.type, dtype=dtype):
            low = net(*model.batch_inputs(batch))
    for r, l in zip(ref, low, strict=True):
        assert torch.isfinite(l).all()
        assert (torch.sigmoid(r) - torch.sigmoid(l.float())).abs().max() < 0.05


def test_export_from_device_model(batch, tmp_path):
    net = build()
    inputs = tuple(t[:8] for t in model.batch_inputs(batch))
    result = export_model(net, inputs, input_names=list(model.INPUT_NAMES), output_names=list(model.OUTPUT_NAMES),
                          folder=tmp_path)
    assert result.max_abs_diff < 1e-4
