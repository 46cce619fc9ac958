"""Bad input to the retrieval trainer fails before anything runs, naming the fix (no TensorFlow needed)."""

from __future__ import annotations

import sys

import pytest

from ml.engine.config import parse_config
from ml.engine.errors import ConfigError
from ml.retrieval.train import RetrievalTrainConfig, train


@pytest.mark.parametrize("args,match", [
    (["--set", "tower_dims=0"], "tower_dims"),
    (["--set", "temperature=0"], "temperature"),
    (["--batch-size", "0"], "batch_size"),
    (["--set", "data_dir=/nonexistent/shards"], "omit --data-dir"),
    (["--set", "max_steps=0"], "max_steps"),
])
def test_bad_config_is_refused(args, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(RetrievalTrainConfig, args)


def test_several_processes_are_refused_before_tensorflow_loads(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="keras#20585"):
        train(parse_config(RetrievalTrainConfig, []))
    assert "tensorflow" not in sys.modules
