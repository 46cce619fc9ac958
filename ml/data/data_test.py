"""Tests for the shared feed library: framework-free, exact stream sharding and resume on numpy batches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ml.data import parquet, schema, synthetic

SMALL = synthetic.SyntheticConfig(num_users=200, num_items=150, num_topics=8, seq_len=6, num_dense=4, seed=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return synthetic.generate_shards(tmp_path_factory.mktemp("s"), SMALL, 1001, 3, rows_per_group=200)


def test_imports_no_ml_framework():
    code = (
        "import sys, ml.data.parquet, ml.data.schema, ml.data.synthetic\n"
        "bad = sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_streams_cover_every_row_once_as_numpy(shards):
    seen = []
    for rank in range(3):
        for batch in parquet.ParquetBatches(shards, 64, rank=rank, world_size=3, seed=4):
            assert all(isinstance(v, np.ndarray) for v in batch.values())
            assert batch["hist_items"].shape[1] == SMALL.seq_len
            assert batch["hist_items"].flags.writeable
            seen.extend(batch["row_id"].tolist())
    assert sorted(seen) == list(range(1001))


def test_skip_batches_resumes_exactly(shards):
    full = list(parquet.ParquetBatches(shards, 50, seed=1, epoch=3))
    resumed = list(parquet.ParquetBatches(shards, 50, seed=1, epoch=3, skip_batches=7))
    assert len(resumed) == len(full) - 7
    for a, b in zip(full[7:], resumed, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_iter_stream_matches_rank_iteration(shards):
    ds = parquet.ParquetBatches(shards, 40, rank=1, world_size=2, seed=6)
    via_rank = [b["row_id"].tolist() for b in ds]
    via_stream = [b["row_id"].tolist() for b in parquet.ParquetBatches(shards, 40, seed=6).iter_stream(1, 2)]
    assert via_rank == via_stream


def test_schema_error_names_the_feed_schema_and_fix():
    import pyarrow as pa

    fields = [f for f in schema.SCHEMA if f.name != "hist_items"]
    with pytest.raises(ValueError, match="missing column 'hist_items'.*ml.data.schema.SCHEMA"):
        schema.validate_schema(pa.schema(fields))
