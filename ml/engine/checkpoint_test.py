"""Checkpoint folders: atomic commit, keep-last-N, torn staging ignored, foreign configs refused naming the
change; and the torch state inside them: exact RNG restore, no arbitrary unpickling."""

import random

import numpy as np
import pytest
import torch

from ml.engine.checkpoint import CheckpointStore, config_digest
from ml.engine.errors import CheckpointError
from ml.engine.torch.state import capture_rng, load_model_state, restore_rng, torch_load


def _store(folder, keep=3, lr=0.1):
    return CheckpointStore(folder, keep=keep, digest=config_digest({"lr": lr}), config={"lr": lr})


def _save(store, step, model):
    with store.writer(step, {"epoch": 0, "batch_in_epoch": step}) as staging:
        torch.save({"model": model.state_dict()}, staging / "state.pt")
    return store.folder / store.name(step)


def test_rng_state_round_trips_exactly():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand(2)
    restore_rng(state)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_latest_pointer_keep_and_reload(tmp_path):
    model = torch.nn.Linear(3, 2)
    store = _store(tmp_path, keep=2)
    for step in (5, 10, 15, 20):
        _save(store, step, model)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000015", "ckpt-00000020"]
    latest = store.latest()
    assert latest.path.name == "ckpt-00000020" and latest.step == 20
    assert latest.meta["batch_in_epoch"] == 20
    assert torch.equal(load_model_state(latest.path)["weight"], model.weight.detach())


def test_failed_write_leaves_the_previous_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    store = _store(tmp_path)
    good = _save(store, 5, model)
    with pytest.raises(RuntimeError, match="disk full"):
        with store.writer(10) as staging:
            (staging / "state.pt").write_bytes(b"half a checkpoint")
            raise RuntimeError("disk full")
    assert store.latest().path == good
    assert not list(tmp_path.glob(".staging-*"))


def test_torn_staging_folder_from_a_crash_is_ignored_then_cleaned(tmp_path):
    model = torch.nn.Linear(3, 2)
    store = _store(tmp_path)
    good = _save(store, 5, model)
    (tmp_path / ".staging-ckpt-00000010").mkdir()  # a process killed mid-write
    (tmp_path / ".staging-ckpt-00000010" / "state.pt").write_bytes(b"half")
    assert store.latest().path == good
    _save(store, 15, model)
    assert not (tmp_path / ".staging-ckpt-00000010").exists()


def test_foreign_config_refused_naming_the_change_and_the_fix(tmp_path):
    _save(_store(tmp_path, lr=0.1), 5, torch.nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"different config .*lr: 0.1 -> 0.5.* use a new --run-dir"):
        _store(tmp_path, lr=0.5).latest()


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    path = tmp_path / "state.pt"
    torch.save({"payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint file"):
        torch_load(path)


def test_dangling_latest_pointer_explains(tmp_path):
    (tmp_path / "latest").write_text("ckpt-00000099\n")
    with pytest.raises(CheckpointError, match="missing or incomplete; delete"):
        _store(tmp_path).latest()


def test_config_digest_ignores_listed_keys():
    assert config_digest({"lr": 1, "run_name": "a"}, ignore=("run_name",)) == \
        config_digest({"lr": 1, "run_name": "b"}, ignore=("run_name",))
    assert config_digest({"lr": 1}) != config_digest({"lr": 2})
