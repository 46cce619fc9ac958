"""Retrieval training data from the shared feed shards (ml/data): clicked impressions as tf.data batches.

Why one reader batch per step: a training step takes one batch of impressions from
``ml.data.parquet.ParquetBatches`` and keeps its clicks as (query, item) positives. The number of
positives varies a little per step, but the data position is then exactly "reader batches consumed",
which ``skip_batches`` replays on resume — the same exactly-once, resumable stream the PyTorch ranker uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import tensorflow as tf

from ml.data.parquet import Batch, ParquetBatches

__all__ = ["FEATURES", "clicked", "eval_pairs", "item_click_counts", "log_q", "popularity_recall", "recall_at_k",
           "train_dataset"]

FEATURES = ("user_id", "hist_items", "hist_actions", "context", "item_id")


def clicked(batch: Batch) -> Batch:
    """The clicked rows of an impression batch, reduced to the retrieval features."""
    keep = batch["click"] > 0.5
    return {k: batch[k][keep] for k in FEATURES}


def train_dataset(files: Sequence[Path], rows_per_step: int, *, seq_len: int, num_context: int, seed: int,
                  steps_per_epoch: int, start_epoch: int = 0, skip_batches: int = 0, rank: int = 0,
                  world_size: int = 1) -> tf.data.Dataset:
    """Endless stream of positive batches, one per reader batch, from (start_epoch, skip_batches) on.

    Epoch e reads the rows of epoch e of ``ParquetBatches`` (shuffled by (seed, e)), ``steps_per_epoch``
    reader batches per epoch (``batches_per_epoch(..., drop_last=True)``), so every rank steps in lockstep.
    """
    files = [Path(f) for f in files]

    def gen() -> Iterator[Batch]:
        epoch, skip = start_epoch, skip_batches
        while True:
            reader = ParquetBatches(files, rows_per_step, rank=rank, world_size=world_size, seed=seed, epoch=epoch,
                                    drop_last=True, skip_batches=skip)
            for n, batch in enumerate(reader, start=skip):
                if n >= steps_per_epoch:
                    break
                yield clicked(batch)
            epoch, skip = epoch + 1, 0

    sig = {
        "user_id": tf.TensorSpec([None], tf.int64),
        "hist_items": tf.TensorSpec([None, seq_len], tf.int64),
        "hist_actions": tf.TensorSpec([None, seq_len], tf.int64),
        "context": tf.TensorSpec([None, num_context], tf.int64),
        "item_id": tf.TensorSpec([None], tf.int64),
    }
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def item_click_counts(files: Sequence[Path], num_items: int) -> np.ndarray:
    """Clicks per item id 0..num_items over ``files`` (streamed column by column, row group at a time)."""
    counts = np.zeros(num_items + 1, np.int64)
    for f in files:
        pf = pq.ParquetFile(f)
        for rg in range(pf.num_row_groups):
            t = pf.read_row_group(rg, columns=["item_id", "click"])
            items = t.column("item_id").to_numpy()
            if items.size and (items.min() < 0 or items.max() > num_items):
                raise ValueError(f"{f} has item ids outside 0..{num_items}; raise num_items to the largest id")
            counts += np.bincount(items[t.column("click").to_numpy() > 0.5], minlength=num_items + 1)
    return counts


def log_q(counts: np.ndarray) -> np.ndarray:
    """log of each item's sampling probability among clicks, add-one smoothed (unseen items stay finite)."""
    smoothed = counts.astype(np.float64) + 1.0
    return np.log(smoothed / smoothed.sum()).astype(np.float32)


def eval_pairs(files: Sequence[Path], limit: int | None = None) -> Batch:
    """Every clicked held-out row (query features + the engaged item), in file order."""
    parts = [clicked(b) for b in ParquetBatches(list(files), 8192, shuffle=False)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in FEATURES}
    return out if limit is None else {k: v[:limit] for k, v in out.items()}


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def recall_at_k(queries: np.ndarray, item_table: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Fraction of queries whose engaged item is among the K best-scoring items (padding id 0 excluded)."""
    hits = {k: 0 for k in ks}
    for s in range(0, len(queries), 2048):
        scores = queries[s:s + 2048] @ item_table.T
        scores[:, 0] = -np.inf
        top = _topk(scores, max(ks))
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        ranked = np.take_along_axis(top, order, axis=1)
        for k in ks:
            hits[k] += int((ranked[:, :k] == targets[s:s + 2048, None]).any(axis=1).sum())
    return {f"recall@{k}": hits[k] / max(len(queries), 1) for k in ks}


def popularity_recall(counts: np.ndarray, targets: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K of recommending the K most-clicked training items to everyone."""
    order = np.argsort(-counts[1:], kind="stable") + 1
    return {f"recall@{k}": float(np.isin(targets, order[:k]).mean()) for k in ks}
