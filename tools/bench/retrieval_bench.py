"""Benchmark: Keras fit through the engine's TensorFlow adapter vs bare fit; retrieval recall vs popularity.

Prints markdown for docs/benchmarks.md. On the same model, data (the default synthetic feed shards),
optimizer and step count, alternating to spread machine noise:
  1. bare ``model.fit`` on the tf.data pipeline;
  2. the same ``fit`` with the adapter's RunCallback inside ``ml.engine.run.start``: MLflow (a sqlite store in a
     temporary folder), TensorBoard, progress, periodic checkpoints through tf.train.CheckpointManager.
Loop time runs from the first batch's start to the last batch's end (model build, data generation and
evaluation excluded). Then one model trained for --epochs full epochs is scored on held-out clicks: recall@K
of the engaged item among all items vs the popularity baseline.

usage: tools/bazel run //tools/bench:retrieval_bench -- [--steps 200] [--repeats 3] [--epochs 3 (0: no recall)] [--skip-adapter]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from ml.data import parquet
from ml.retrieval import data, model
from ml.retrieval.train import RECALL_KS, RetrievalTrainConfig, _context_cardinalities, _shards


class LoopTimer(keras.callbacks.Callback):
    """Wall time from the first batch's start to the last batch's end."""

    def __init__(self) -> None:
        super().__init__()
        self.first = self.last = None

    def on_train_batch_begin(self, batch, logs=None):
        self.first = self.first or time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last = time.perf_counter()


def build(config, train_files, num_context, counts):
    keras.utils.set_random_seed(config.seed)
    cfg = model.RetrievalConfig(num_users=config.num_users, num_items=config.num_items, seq_len=config.seq_len,
                                context_cardinalities=_context_cardinalities(config, num_context),
                                embed_dim=config.embed_dim, tower_dims=tuple(config.tower_dims),
                                temperature=config.temperature)
    net = model.TwoTower(cfg, log_q=data.log_q(counts))
    net.compile(optimizer=keras.optimizers.Adam(config.lr))
    spe = parquet.batches_per_epoch(train_files, config.batch_size, drop_last=True)
    ds = data.train_dataset(train_files, config.batch_size, seq_len=config.seq_len, num_context=num_context,
                            seed=config.seed, steps_per_epoch=spe)
    return net, ds, spe


def bare(config, files, num_context, counts, steps):
    net, ds, spe = build(config, files, num_context, counts)
    timer = LoopTimer()
    net.fit(ds, epochs=-(-steps // spe), steps_per_epoch=min(spe, steps), verbose=0, callbacks=[timer])
    return (timer.last - timer.first) / (steps - 1) * 1e3, net


def adapter(config, files, num_context, counts, steps, folder):
    from ml.engine import run
    from ml.engine.tf import callback, checkpoint

    net, ds, spe = build(config, files, num_context, counts)
    cfg = RetrievalTrainConfig(**{**vars(config), "run_dir": str(folder), "run_name": folder.name,
                                  "checkpoint_every": 50, "log_every": 20, "max_steps": steps})
    timer = LoopTimer()
    with run.start(cfg, project="retrieval_bench") as r:
        ckpt = checkpoint.KerasCheckpoint(net, net.optimizer, steps_per_epoch=spe)
        r.set_total_steps(steps)
        bridge = callback.RunCallback(r, ckpt, max_steps=steps, log_every=20, checkpoint_every=50)
        net.fit(ds, epochs=-(-steps // spe), steps_per_epoch=min(spe, steps), verbose=0, callbacks=[timer, bridge])
    return (timer.last - timer.first) / (steps - 1) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--skip-adapter", action="store_true")
    args = p.parse_args()
    config = RetrievalTrainConfig()
    train_files, eval_files, num_context = _shards(config, True)
    counts = data.item_click_counts(train_files, config.num_items)
    tmp = Path(tempfile.mkdtemp(prefix="retrieval_bench_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    times = {"bare": [], "adapter": []}
    for i in range(0 if args.skip_adapter else args.repeats):
        times["bare"].append(bare(config, train_files, num_context, counts, args.steps)[0])
        times["adapter"].append(adapter(config, train_files, num_context, counts, args.steps, tmp / f"run{i}"))
    if times["bare"]:
        b, a = statistics.median(times["bare"]), statistics.median(times["adapter"])
        print(f"| loop | ms/step (median of {args.repeats}, {args.steps} steps) |\n|---|---|")
        print(f"| bare `model.fit` | {b:.2f} |\n| `fit` + RunCallback in `run.start` | {a:.2f} ({(a / b - 1) * 100:+.1f}%) |")
        print(f"runs: bare {[round(t, 2) for t in times['bare']]}, adapter {[round(t, 2) for t in times['adapter']]}")
    if args.epochs < 1:
        return 0
    spe = parquet.batches_per_epoch(train_files, config.batch_size, drop_last=True)
    t0 = time.perf_counter()
    _, net = bare(config, train_files, num_context, counts, args.epochs * spe)
    fit_s = time.perf_counter() - t0
    pairs = data.eval_pairs(eval_files)
    q = np.concatenate([keras.ops.convert_to_numpy(net.query(*(pairs[k][s:s + 4096] for k in model.QUERY_INPUTS)))
                        for s in range(0, len(pairs["item_id"]), 4096)])
    ours = data.recall_at_k(q, net.item_table(), pairs["item_id"], RECALL_KS)
    pop = data.popularity_recall(counts, pairs["item_id"], RECALL_KS)
    print(f"\n{args.epochs} epochs x {spe} steps in {fit_s:.0f} s; {len(pairs['item_id'])} held-out clicks, "
          f"{config.num_items} items\n")
    print("| retriever | " + " | ".join(f"recall@{k}" for k in RECALL_KS) + " |\n|---|" + "---|" * len(RECALL_KS))
    print("| popularity (top-K most-clicked) | " + " | ".join(f"{pop[f'recall@{k}']:.3f}" for k in RECALL_KS) + " |")
    print("| two-tower, log-Q in-batch softmax | " + " | ".join(f"{ours[f'recall@{k}']:.3f}" for k in RECALL_KS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
