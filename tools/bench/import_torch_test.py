"""Benchmark fixture (tools/bench/env_startup.py): the cost of starting a test that imports torch."""

import torch


def test_import_torch():
    assert torch.zeros(1).item() == 0.0
