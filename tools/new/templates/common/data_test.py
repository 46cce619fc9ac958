"""Tests for __project__'s data: determinism, disjoint splits, the batch contract, resumable batch order."""

import numpy as np
import pytest

from ml.__project__ import data


def test_generate_is_deterministic_and_splits_differ():
    a, b = data.generate(500, split="train"), data.generate(500, split="train")
    for key in ("cat", "dense", "label"):
        np.testing.assert_array_equal(a[key], b[key])
    held_out = data.generate(500, split="eval")
    assert not np.array_equal(a["dense"], held_out["dense"])


def test_batch_contract():
    rows = data.generate(300, split="train")
    assert rows["cat"].shape == (300, len(data.CARDINALITIES)) and rows["cat"].dtype == np.int64
    assert rows["dense"].shape == (300, data.NUM_DENSE) and rows["dense"].dtype == np.float32
    assert set(np.unique(rows["label"])) <= {0.0, 1.0}
    for field, cardinality in enumerate(data.CARDINALITIES):
        assert rows["cat"][:, field].min() >= 0 and rows["cat"][:, field].max() < cardinality
    assert 0.05 < rows["label"].mean() < 0.95  # both classes present: AUC means something


def test_batches_cover_each_row_once_per_epoch_and_resume_exactly():
    full = data.batch_slices(1000, 64, epoch=3, seed=1)
    assert len(full) == 1000 // 64
    seen = np.concatenate(full)
    assert len(np.unique(seen)) == len(seen)
    resumed = data.batch_slices(1000, 64, epoch=3, seed=1, skip_batches=5)
    for x, y in zip(full[5:], resumed, strict=True):
        np.testing.assert_array_equal(x, y)


def test_ranks_split_each_global_batch():
    ranks = [data.batch_slices(1000, 32, epoch=0, seed=0, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    single = data.batch_slices(1000, 64, epoch=0, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate([ranks[0][0], ranks[1][0]])), np.sort(single[0]))


@pytest.mark.parametrize("bad", [{"rows": 0, "split": "train"}, {"rows": 10, "split": "test"}])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        data.generate(bad["rows"], split=bad["split"])
