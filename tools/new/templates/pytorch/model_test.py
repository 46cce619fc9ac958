"""Tests for __project__'s model: shapes, gradients everywhere, and that it learns the synthetic data."""

import numpy as np
import torch

from ml.__project__ import data, model
from ml.engine.metrics import roc_auc

CONFIG = model.ModelConfig(cardinalities=data.CARDINALITIES, num_dense=data.NUM_DENSE, embed_dim=8, hidden=(32,))


def _tensors(rows: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(rows["cat"]), torch.from_numpy(rows["dense"]), torch.from_numpy(rows["label"])


def test_shapes_and_gradients():
    torch.manual_seed(0)
    net = model.ClickModel(CONFIG)
    cat, dense, label = _tensors(data.generate(64, split="train"))
    logit = net(cat, dense)
    assert logit.shape == (64,)
    torch.nn.functional.binary_cross_entropy_with_logits(logit, label).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_learns_better_than_chance_in_a_few_hundred_steps():
    torch.manual_seed(0)
    net = model.ClickModel(CONFIG)
    cat, dense, label = _tensors(data.generate(8192, split="train"))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(200):
        rows = slice((step * 256) % 8192, (step * 256) % 8192 + 256)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(cat[rows], dense[rows]), label[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = _tensors(data.generate(2048, split="eval"))
    with torch.no_grad():
        scores = net(held_out[0], held_out[1]).numpy()
    assert roc_auc(held_out[2].numpy(), scores) > 0.7
