"""Checkpoints: atomic writes, exact RNG restore, refusal of foreign configs, no arbitrary unpickling."""

import random

import numpy as np
import pytest
import torch

from ml.engine import checkpoint as ckpt
from ml.engine.errors import CheckpointError


def _save(folder, step, model, opt, keep=3):
    return ckpt.save_checkpoint(folder, position=ckpt.DataPosition(0, step, step), model=model, optimizer=opt,
                                scaler=None, config_hash="abc", keep=keep)


def test_rng_state_round_trips_exactly():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = ckpt.capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand(2)
    ckpt.restore_rng(state)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_latest_pointer_keep_and_reload(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    for step in (5, 10, 15, 20):
        _save(tmp_path, step, model, opt, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-00000015.pt", "ckpt-00000020.pt"]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "ckpt-00000020.pt"
    state = ckpt.load_checkpoint(latest, config_hash="abc")
    assert state["position"] == {"epoch": 0, "batch_in_epoch": 20, "global_step": 20}
    assert torch.equal(state["model"]["weight"], model.weight.detach())


def test_torn_temporary_file_is_ignored(tmp_path):
    model = torch.nn.Linear(3, 2)
    good = _save(tmp_path, 5, model, torch.optim.SGD(model.parameters(), lr=0.1))
    (tmp_path / ".ckpt-00000010.pt.tmp-999").write_bytes(b"half a checkpoint")  # a crash mid-write
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_foreign_config_refused_with_fix(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = _save(tmp_path, 5, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="different config .* use a new --run-dir"):
        ckpt.load_checkpoint(path, config_hash="other")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"config_hash": "abc", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        ckpt.load_checkpoint(path, config_hash="abc")


def test_dangling_latest_pointer_explains(tmp_path):
    (tmp_path / "latest").write_text("ckpt-00000099.pt\n")
    with pytest.raises(CheckpointError, match="does not exist; delete"):
        ckpt.latest_checkpoint(tmp_path)


def test_config_digest_ignores_listed_keys():
    assert ckpt.config_digest({"lr": 1, "run_name": "a"}, ignore=("run_name",)) == \
        ckpt.config_digest({"lr": 1, "run_name": "b"}, ignore=("run_name",))
    assert ckpt.config_digest({"lr": 1}) != ckpt.config_digest({"lr": 2})
