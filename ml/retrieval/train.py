"""Two-tower retrieval: train the Keras query/item towers on the shared feed shards through the engine.

    tools/bazel run //ml/retrieval:train                     # default: a few minutes on 2 CPU cores
    tools/bazel run //ml/retrieval:train -- --help           # every flag
    tools/bazel run //ml/retrieval:train -- --precision mixed_bfloat16 --set embed_dim=64

The model (model.py) and data (data.py) are native Keras 3 / tf.data; this file wires them into the engine:
``ml.engine.run`` (run folder, MLflow, TensorBoard, progress, signals, checkpoint folders) and the TensorFlow
adapter ``ml.engine.tf`` (strategy, precision, CheckpointManager with the data position, the Keras callback
that bridges ``model.fit`` to the run, SavedModel export). It never imports torch.

Quality: recall@10/50/100 of the engaged item among all items on held-out clicks, against recommending the
most-clicked training items to everyone (the popularity baseline); both go to MLflow as eval/ metrics.
Export: a SavedModel taking the query features and returning the query embedding and the top-100 items
scored against the item embedding table (which the SavedModel holds).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ml.data import parquet, synthetic
from ml.data.schema import NUM_ACTION_TYPES, validate_schema
from ml.engine.config import parse_config
from ml.engine.errors import ConfigError
from ml.engine.tracking import workspace_dir

__all__ = ["RetrievalTrainConfig", "main", "train"]

RECALL_KS = (10, 50, 100)
TOP_K = 100


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class RetrievalTrainConfig:
    """Train the two-tower candidate retriever (Keras 3 on TensorFlow)."""

    # data
    data_dir: str | None = field(default=None, metadata=_h(
        "folder with train-*.parquet and eval-*.parquet shards (ml.data.schema); none: generate synthetic data"))
    train_samples: int = field(default=300_000, metadata=_h("synthetic training impressions"))
    eval_samples: int = field(default=50_000, metadata=_h("synthetic held-out impressions"))
    num_shards: int = field(default=4, metadata=_h("Parquet shards per split (synthetic)"))
    num_users: int = field(default=5000, metadata=_h("users (ids 1..num_users)"))
    num_items: int = field(default=2000, metadata=_h("items (ids 1..num_items)"))
    seq_len: int = field(default=20, metadata=_h("recent actions per user (synthetic)"))
    data_seed: int = field(default=0, metadata=_h("seed of the synthetic world"))
    # model
    embed_dim: int = field(default=32, metadata=_h("id embedding width"))
    tower_dims: tuple[int, ...] = field(default=(64, 32), metadata=_h("MLP widths of each tower; the last is the "
                                                                       "embedding size"))
    temperature: float = field(default=0.05, metadata=_h("softmax temperature of the in-batch loss"))
    # training
    batch_size: int = field(default=1024, metadata=_h("impressions read per step; their clicks form the batch"))
    epochs: int = field(default=3, metadata=_h("passes over the training impressions"))
    max_steps: int | None = field(default=None, metadata=_h("stop after this many steps (none: run all epochs)"))
    lr: float = field(default=3e-3, metadata=_h("learning rate (Adam)"))
    seed: int = field(default=0, metadata=_h("seed for initialisation and data order"))
    precision: Literal["float32", "mixed_bfloat16"] = field(default="float32", metadata=_h("Keras dtype policy"))
    eval_limit: int | None = field(default=None, metadata=_h("evaluate on at most this many held-out clicks"))
    # run
    checkpoint_every: int = field(default=200, metadata=_h("write a checkpoint every N steps (and at the end)"))
    keep_checkpoints: int = field(default=3, metadata=_h("how many recent checkpoints to keep"))
    resume: bool = field(default=False, metadata=_h("continue from the latest checkpoint in --run-dir"))
    run_dir: str | None = field(default=None, metadata=_h("run folder (default .mlenv/runs/retrieval/<run_name>)"))
    run_name: str | None = field(default=None, metadata=_h("MLflow run name (default: retrieval-<timestamp>)"))
    experiment: str | None = field(default=None, metadata=_h("MLflow experiment (default: retrieval)"))
    log_every: int = field(default=20, metadata=_h("log metrics every N steps"))
    export: bool = field(default=True, metadata=_h("export the SavedModel at the end"))

    resume_ignores = ("data_dir", "eval_limit")

    def validate(self) -> None:
        for key in ("train_samples", "eval_samples", "num_shards", "num_users", "num_items", "seq_len", "embed_dim",
                    "batch_size", "epochs", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or omitted), got {self.max_steps}")
        if not self.tower_dims or min(self.tower_dims) < 1:
            raise ConfigError(f"tower_dims must be positive widths, e.g. 64,32; got {self.tower_dims}")
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"temperature must be in (0, 10], got {self.temperature}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ConfigError(f"data_dir {self.data_dir} is not a folder; omit --data-dir to generate synthetic data")


def _shards(config: RetrievalTrainConfig, is_primary: bool) -> tuple[list[Path], list[Path], int]:
    """(train files, eval files, number of context features); synthetic shards are generated once per config."""
    if config.data_dir:
        folder = Path(config.data_dir)
    else:
        world = synthetic.SyntheticConfig(num_users=config.num_users, num_items=config.num_items,
                                          seq_len=config.seq_len, seed=config.data_seed)
        # The same key as homefeed's for the same world and sizes, so both projects read one copy of the shards.
        key = json.dumps({"world": world.to_dict(), "train": config.train_samples, "eval": config.eval_samples,
                          "shards": config.num_shards}, sort_keys=True)
        folder = workspace_dir() / ".mlenv" / "data" / "homefeed" / hashlib.sha256(key.encode()).hexdigest()[:12]
        done = folder / "COMPLETE"
        if is_primary and not done.exists():
            print(f"mlenv: generating synthetic feed data in {folder}", file=sys.stderr, flush=True)
            synthetic.generate_shards(folder, world, config.train_samples, config.num_shards, split="train")
            synthetic.generate_shards(folder, world, config.eval_samples, max(1, config.num_shards // 2), split="eval")
            done.write_text(json.dumps(world.to_dict(), sort_keys=True) + "\n")
    train_files = sorted(folder.glob("train-*.parquet"))
    eval_files = sorted(folder.glob("eval-*.parquet"))
    if not train_files or not eval_files:
        raise ConfigError(f"{folder} has no train-*.parquet / eval-*.parquet shards")
    import pyarrow.parquet as pq

    for path in (train_files[0], eval_files[0]):
        validate_schema(pq.read_schema(path), where=str(path))
    first = next(iter(parquet.ParquetBatches(eval_files[:1], 1, shuffle=False)))
    if first["hist_items"].shape[1] != config.seq_len:
        raise ConfigError(f"the shards hold {first['hist_items'].shape[1]} history items per row but seq_len is "
                          f"{config.seq_len}; pass --set seq_len={first['hist_items'].shape[1]}")
    return train_files, eval_files, first["context"].shape[1]


def _context_cardinalities(config: RetrievalTrainConfig, num_context: int) -> tuple[int, ...]:
    if config.data_dir is None:
        return synthetic.SyntheticConfig().context_cardinalities
    return tuple([1000] * num_context)


def train(config: RetrievalTrainConfig) -> int:
    from ml.engine.tf import strategy

    penv = strategy.process_env()
    if penv.world_size > 1:  # refused before TensorFlow loads and any worker starts waiting for its peers
        raise ConfigError(
            f"{penv.world_size} processes: Keras model.fit does not run under MultiWorkerMirroredStrategy with the "
            "locked TF/Keras (keras#20585); this trainer is one process for now: drop --nproc / run one worker")

    import keras
    import tensorflow as tf

    from ml.engine import run
    from ml.engine.tf import callback, checkpoint, export, precision
    from ml.retrieval import data, model

    strat, penv = strategy.select_strategy()
    if not strategy.fit_supported(strat):
        raise SystemExit(f"retrieval trains with model.fit, which {type(strat).__name__} does not support here; "
                         "run it as one process (no --nproc / WORLD_SIZE=1)")
    precision.set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    with run.start(config, project="retrieval") as r:
        train_files, eval_files, num_context = _shards(config, r.is_primary)
        counts = data.item_click_counts(train_files, config.num_items)
        cfg = model.RetrievalConfig(num_users=config.num_users, num_items=config.num_items, seq_len=config.seq_len,
                                    context_cardinalities=_context_cardinalities(config, num_context),
                                    num_action_types=NUM_ACTION_TYPES, embed_dim=config.embed_dim,
                                    tower_dims=tuple(config.tower_dims), temperature=config.temperature)
        net = model.TwoTower(cfg, log_q=data.log_q(counts))
        net.compile(optimizer=keras.optimizers.Adam(config.lr))
        probe = data.eval_pairs(eval_files, limit=2)
        net(probe)  # creates the variables before a checkpoint is restored into them
        spe = parquet.batches_per_epoch(train_files, config.batch_size, penv.world_size, drop_last=True)
        if spe < 1:
            raise ConfigError(f"batch_size {config.batch_size} is larger than the training data; lower it")
        ckpt = checkpoint.KerasCheckpoint(net, net.optimizer, steps_per_epoch=spe)
        pos = callback.resume(r, ckpt)
        total = config.max_steps or config.epochs * spe
        r.set_total_steps(total, pos.global_step)
        r.print_banner(f"retrieval: {total} steps ({spe}/epoch), {config.precision}")
        ds = data.train_dataset(train_files, config.batch_size, seq_len=config.seq_len, num_context=num_context,
                                seed=config.seed, steps_per_epoch=spe, start_epoch=pos.epoch,
                                skip_batches=pos.batch_in_epoch, rank=penv.rank, world_size=penv.world_size)
        bridge = callback.RunCallback(r, ckpt, max_steps=total, log_every=config.log_every,
                                      checkpoint_every=config.checkpoint_every)
        remaining = total - pos.global_step
        final_loss = float("nan")
        if remaining > 0:
            hist = net.fit(ds, epochs=math.ceil(remaining / spe), steps_per_epoch=spe, verbose=0, callbacks=[bridge])
            final_loss = float(hist.history["loss"][-1]) if hist.history.get("loss") else final_loss
        if bridge.stopped_by_request:
            r.print_summary(f"retrieval: stopped at step {ckpt.position.global_step} after writing a checkpoint; "
                            "relaunch with --resume to continue")
            return 0
        if not r.is_primary:
            return 0
        pairs = data.eval_pairs(eval_files, limit=config.eval_limit)
        queries = np.concatenate([
            keras.ops.convert_to_numpy(net.query(*(pairs[k][s:s + 4096] for k in model.QUERY_INPUTS)))
            for s in range(0, len(pairs["item_id"]), 4096)])
        table = net.item_table()
        # MLflow metric names may not hold '@': recall@10 is logged as eval/recall_at_10.
        ours = data.recall_at_k(queries, table, pairs["item_id"], RECALL_KS)
        pop = data.popularity_recall(counts, pairs["item_id"], RECALL_KS)
        metrics = {f"eval/recall_at_{k}": ours[f"recall@{k}"] for k in RECALL_KS}
        metrics.update({f"eval/popularity_recall_at_{k}": pop[f"recall@{k}"] for k in RECALL_KS})
        metrics["eval/clicks"] = float(len(pairs["item_id"]))
        r.log(metrics, ckpt.position.global_step)
        if config.export:
            table_var = tf.Variable(table, trainable=False, name="item_table")

            def serve(user_id, hist_items, hist_actions, context):
                q = tf.cast(net.query(user_id, hist_items, hist_actions, context), tf.float32)
                scores, items = tf.math.top_k(tf.matmul(q, table_var[1:], transpose_b=True), k=min(TOP_K, cfg.num_items))
                return {"query_embedding": q, "top_items": tf.cast(items, tf.int64) + 1, "top_scores": scores}

            golden = {k: pairs[k][:16] for k in model.QUERY_INPUTS}
            holder = tf.Module()
            holder.net, holder.table = net, table_var
            result = export.export_saved_model(serve, golden, folder=r.export_dir, trackable=holder, atol=1e-4)
            r.register_export(result.folder)
        latest = r.latest_checkpoint()
        if latest is not None:
            r.log_artifact(latest.path, "checkpoint")
        r.write_result(global_step=ckpt.position.global_step, final_loss=final_loss,
                       eval_metrics={k.removeprefix("eval/"): v for k, v in metrics.items()})
        r.print_summary(f"retrieval: recall@100 {metrics['eval/recall_at_100']:.3f} "
                        f"(popularity {metrics['eval/popularity_recall_at_100']:.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(RetrievalTrainConfig, args, prog="tools/bazel run //ml/retrieval:train --")
    return train(config)


if __name__ == "__main__":
    sys.exit(main())
