"""The parts of the Ray Data input path that need no Ray cluster: shard discovery, preprocessing, refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.data import parquet, ray_data, synthetic

SMALL = synthetic.SyntheticConfig(num_users=100, num_items=80, num_topics=4, seq_len=5, num_dense=3, seed=1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s")
    synthetic.generate_shards(folder, SMALL, 300, 3, rows_per_group=64)
    synthetic.generate_shards(folder, SMALL, 50, 1, split="eval")
    return folder


def test_import_pulls_in_neither_ray_nor_torch():
    code = ("import sys, ml.data.ray_data\n"
            "bad = sorted(m for m in ('ray', 'torch', 'tensorflow') if m in sys.modules)\nassert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_feed_source_lists_the_split_and_reads_footers(shards):
    src = ray_data.feed_source(shards)
    assert [p.rsplit("/", 1)[1] for p in src.paths] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert src.total_rows == 300
    assert src.columns == parquet.ParquetBatches(sorted(shards.glob("train-*")), 8).columns
    assert src.widths == {"context": 3, "dense": 3, "hist_items": 5, "hist_actions": 5, "hist_gaps": 5}
    assert ray_data.feed_source(shards, split="eval").total_rows == 50
    as_uri = ray_data.feed_source(f"file://{shards}")
    assert as_uri.paths == src.paths


def test_preprocess_equals_the_reader(shards):
    files = sorted(shards.glob("train-*.parquet"))
    src = ray_data.feed_source(files)
    table = pa.concat_tables(pq.read_table(f) for f in files)
    table = table.append_column("path", pa.array([str(files[0])] * table.num_rows))
    got = ray_data.preprocess(table, src.columns, dict(src.widths))
    want = next(iter(parquet.ParquetBatches(files, 300, shuffle=False)))
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    empty = ray_data.preprocess(table.slice(0, 0), src.columns, dict(src.widths))
    assert {k: (v.dtype, v.shape) for k, v in empty.items()} == {k: (v.dtype, (0, *v.shape[1:]))
                                                                 for k, v in want.items()}


def test_preprocess_names_the_shard_with_other_widths(shards):
    files = sorted(shards.glob("train-*.parquet"))
    table = pq.read_table(files[0]).append_column("path", pa.array(["s3://bucket/odd.parquet"] * 100))
    src = ray_data.feed_source(files)
    with pytest.raises(ValueError, match="column 'hist_items' in s3://bucket/odd.parquet has 5 values per row "
                                         "but earlier rows had 7"):
        ray_data.preprocess(table, src.columns, {**src.widths, "hist_items": 7})


def test_bad_sources_say_what_and_the_fix(shards, tmp_path):
    with pytest.raises(ValueError, match="has no train-\\*.parquet shards; generate them"):
        ray_data.feed_source(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        ray_data.feed_source([shards / "train-nope.parquet"])
    with pytest.raises(ValueError, match="no Parquet shards given"):
        ray_data.feed_source([])
    bad = tmp_path / "train-0.parquet"
    pq.write_table(pa.table({"user_id": [1]}), bad)
    with pytest.raises(ValueError, match="missing column 'item_id'"):
        ray_data.feed_source(tmp_path)


def test_batches_per_epoch_is_the_even_split():
    assert ray_data.batches_per_epoch(1001, 10, 2) == 50  # 500 rows each (Ray drops the odd row)
    assert ray_data.batches_per_epoch(1001, 10, 2, drop_last=False) == 50
    assert ray_data.batches_per_epoch(1002, 10, 2, drop_last=False) == 51


def test_torch_batches_refuses_outside_ray_train():
    with pytest.raises(RuntimeError, match="only works inside a Ray Train worker.*--on ray"):
        ray_data.torch_batches(8)
