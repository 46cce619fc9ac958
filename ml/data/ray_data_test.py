"""Ray Data input path on a real local Ray: 2 TorchTrainer workers, 2 epochs, every row exactly once per epoch.

Ray listens on every interface, so the driver (testing/ray_data_worker.py) runs inside a private network
namespace with only loopback up, made here with `unshare -n`. Checked per epoch: the two workers' rows are
disjoint and together are every row of the shards; every batch is torch tensors with the reader's keys, dtypes
and widths; each row's values equal ml.data.parquet's for the same row_id; the epochs are shuffled differently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ml.data import parquet, ray_data, synthetic
from ml.data.testing import ray_data_worker as worker

WORLD = synthetic.SyntheticConfig(num_users=200, num_items=150, num_topics=8, seq_len=6, num_dense=4, seed=2)
ROWS = 1200  # divisible by the 2 workers: an even split drops no row


@pytest.fixture(scope="module")
def run():
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} is missing: install util-linux and iproute2 to run Ray in a private "
                                 "network namespace")
    base = Path(tempfile.mkdtemp(prefix="rdt-", dir=os.environ.get("TEST_TMPDIR")))
    shards, out = base / "shards", base / "out"
    out.mkdir()
    synthetic.generate_shards(shards, WORLD, ROWS, 4, rows_per_group=100)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), RAY_DATA_DISABLE_PROGRESS_BARS="1",
               RAY_USAGE_STATS_ENABLED="0")
    py = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", worker.__name__, str(shards), str(out)]
    script = 'ip link set lo up && exec "$@"'
    try:
        proc = subprocess.run(["unshare", "-n", "sh", "-c", script, "sh", *py], env=env, timeout=400,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the Ray driver did not finish in 400 s:\n{(exc.stderr or b'')[-4000:]}") from None
    assert proc.returncode == 0, f"Ray driver failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    results = {}
    for rank in range(worker.WORKERS):
        for epoch in range(worker.EPOCHS):
            stem = out / f"w{rank}-e{epoch}"
            assert stem.with_suffix(".npz").is_file(), f"worker {rank} wrote nothing for epoch {epoch}:\n" \
                                                       f"{proc.stderr[-4000:]}"
            results[rank, epoch] = (dict(np.load(stem.with_suffix(".npz"))),
                                    json.loads(stem.with_suffix(".json").read_text()))
    yield shards, results
    shutil.rmtree(base, ignore_errors=True)


def test_every_row_exactly_once_per_epoch(run):
    _, results = run
    for epoch in range(worker.EPOCHS):
        per_worker = [results[rank, epoch][0]["row_id"] for rank in range(worker.WORKERS)]
        assert all(len(ids) == ROWS // worker.WORKERS for ids in per_worker), [len(i) for i in per_worker]
        seen = np.concatenate(per_worker)
        assert len(np.unique(seen)) == len(seen), f"epoch {epoch}: a row reached the trainers twice"
        assert sorted(seen.tolist()) == list(range(ROWS)), f"epoch {epoch}: rows missing"
    # Rows are reshuffled each epoch (files and the local buffer are seeded by the epoch).
    assert not np.array_equal(results[0, 0][0]["row_id"], results[0, 1][0]["row_id"])


def test_batches_are_the_readers_tensors(run):
    shards, results = run
    reference = next(iter(parquet.ParquetBatches(sorted(shards.glob("train-*.parquet")), ROWS, shuffle=False)))
    assert reference["row_id"].tolist() == list(range(ROWS))
    want_batches = ray_data.batches_per_epoch(ROWS, worker.BATCH_SIZE, worker.WORKERS, drop_last=False)
    for (rank, epoch), (arrays, meta) in results.items():
        assert meta["all_tensors"], f"worker {rank} epoch {epoch}: a batch value was not a torch.Tensor"
        # Full batches plus one partial (drop_last=False); Ray may hand the partial one before the last full one.
        rows = ROWS // worker.WORKERS
        assert len(meta["sizes"]) == want_batches
        assert sorted(meta["sizes"], reverse=True) == [worker.BATCH_SIZE] * (rows // worker.BATCH_SIZE) + [
            rows % worker.BATCH_SIZE], meta["sizes"]
        assert list(meta["kinds"]) == list(reference), "keys differ from the reader's (or their order)"
        for key, (kind, dtype, width) in meta["kinds"].items():
            assert kind == "Tensor"
            assert dtype == f"torch.{reference[key].dtype}", (key, dtype)
            assert width == list(reference[key].shape[1:]), (key, width)
        for key, values in arrays.items():
            np.testing.assert_array_equal(values, reference[key][arrays["row_id"]], err_msg=key)
