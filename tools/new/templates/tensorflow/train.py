"""Train __project__ with Keras `model.fit`, bridged to the engine by its TensorFlow adapter.

    tools/bazel run //ml/__project__:train                   # under a minute on 2 CPU cores
    tools/bazel run //ml/__project__:train -- --help         # every flag
    tools/bazel run //ml/__project__:train -- --precision mixed_bfloat16 --set embed_dim=32

model.py (Keras) and data.py (numpy) are native; this file wires them into ml.engine.run (run folder, MLflow,
TensorBoard, progress, signals, checkpoint folders) and ml.engine.tf (precision, the Keras callback that logs,
checkpoints and stops `model.fit`, CheckpointManager with the data position for exact resume, SavedModel
export with a golden batch). It never imports torch. Evaluation reports held-out AUC and log loss next to the
base-rate baseline.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ml.__project__ import data
from ml.engine.config import parse_config
from ml.engine.errors import ConfigError

__all__ = ["TrainConfig", "main", "train"]

PROJECT = "__project__"


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig:
    """Train the __project__ click model (Keras 3 on TensorFlow)."""

    # data
    train_rows: int = field(default=50_000, metadata=_h("synthetic training rows"))
    eval_rows: int = field(default=10_000, metadata=_h("synthetic held-out rows"))
    data_seed: int = field(default=0, metadata=_h("seed of the synthetic world"))
    # model
    embed_dim: int = field(default=16, metadata=_h("embedding width of each categorical field"))
    hidden: tuple[int, ...] = field(default=(64, 32), metadata=_h("MLP widths"))
    dropout: float = field(default=0.0, metadata=_h("dropout after each hidden layer"))
    # training
    batch_size: int = field(default=512, metadata=_h("rows per step"))
    epochs: int = field(default=2, metadata=_h("passes over the training rows"))
    max_steps: int | None = field(default=None, metadata=_h("stop after this many steps (none: run all epochs)"))
    lr: float = field(default=3e-3, metadata=_h("learning rate (Adam)"))
    seed: int = field(default=0, metadata=_h("seed for initialisation and data order"))
    precision: Literal["float32", "mixed_bfloat16"] = field(default="float32", metadata=_h("Keras dtype policy"))
    # run
    checkpoint_every: int = field(default=200, metadata=_h("write a checkpoint every N steps (and at the end)"))
    keep_checkpoints: int = field(default=3, metadata=_h("how many recent checkpoints to keep"))
    resume: bool = field(default=False, metadata=_h("continue from the latest checkpoint in --run-dir"))
    run_dir: str | None = field(default=None, metadata=_h(f"run folder (default .mlenv/runs/{PROJECT}/<run_name>)"))
    run_name: str | None = field(default=None, metadata=_h(f"MLflow run name (default: {PROJECT}-<timestamp>)"))
    experiment: str | None = field(default=None, metadata=_h(f"MLflow experiment (default: {PROJECT})"))
    log_every: int = field(default=20, metadata=_h("log metrics every N steps"))
    export: bool = field(default=True, metadata=_h("export the SavedModel at the end"))

    def validate(self) -> None:
        for key in ("train_rows", "eval_rows", "embed_dim", "batch_size", "epochs", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or omitted), got {self.max_steps}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be positive widths, e.g. 64,32; got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def train_dataset(rows: dict[str, np.ndarray], config: TrainConfig, steps_per_epoch: int, start_epoch: int,
                  skip_batches: int):
    """An endless stream of batches from (start_epoch, skip_batches) on, in data.batch_slices order."""
    import tensorflow as tf

    def batches():
        epoch, skip = start_epoch, skip_batches
        while True:
            for index in data.batch_slices(config.train_rows, config.batch_size, epoch=epoch, seed=config.seed,
                                           skip_batches=skip)[:steps_per_epoch]:
                yield {"cat": rows["cat"][index], "dense": rows["dense"][index]}, rows["label"][index]
            epoch, skip = epoch + 1, 0

    signature = ({"cat": tf.TensorSpec([None, len(data.CARDINALITIES)], tf.int64),
                  "dense": tf.TensorSpec([None, data.NUM_DENSE], tf.float32)}, tf.TensorSpec([None], tf.float32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature)


def train(config: TrainConfig) -> int:
    from ml.engine.tf import strategy

    penv = strategy.process_env()
    if penv.world_size > 1:  # refused before TensorFlow loads and any worker starts waiting for its peers
        raise ConfigError(f"{penv.world_size} processes: Keras model.fit does not run under MultiWorkerMirroredStrategy "
                          "with the locked TF/Keras (keras#20585); this trainer is one process: drop --nproc")

    import keras
    import tensorflow as tf

    from ml.__project__ import model
    from ml.engine import run
    from ml.engine.metrics import log_loss, roc_auc
    from ml.engine.tf import callback, checkpoint, export, precision

    precision.set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    with run.start(config, project=PROJECT) as r:
        rows = data.generate(config.train_rows, split="train", data_seed=config.data_seed)
        held_out = data.generate(config.eval_rows, split="eval", data_seed=config.data_seed)
        net = model.ClickModel(data.CARDINALITIES, data.NUM_DENSE, embed_dim=config.embed_dim,
                               hidden=tuple(config.hidden), dropout=config.dropout)
        net.compile(optimizer=keras.optimizers.Adam(config.lr), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        inputs = {"cat": held_out["cat"][:16], "dense": held_out["dense"][:16]}
        net(inputs)  # creates the variables before a checkpoint is restored into them
        steps_per_epoch = config.train_rows // config.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(f"batch_size {config.batch_size} is larger than train_rows {config.train_rows}; lower it")
        ckpt = checkpoint.KerasCheckpoint(net, net.optimizer, steps_per_epoch=steps_per_epoch)
        position = callback.resume(r, ckpt)
        total = config.max_steps or config.epochs * steps_per_epoch
        r.set_total_steps(total, position.global_step)
        r.print_banner(f"{PROJECT}: {total} steps ({steps_per_epoch}/epoch), {config.precision}")
        bridge = callback.RunCallback(r, ckpt, max_steps=total, log_every=config.log_every,
                                      checkpoint_every=config.checkpoint_every)
        remaining = total - position.global_step
        final_loss = float("nan")
        if remaining > 0:
            stream = train_dataset(rows, config, steps_per_epoch, position.epoch, position.batch_in_epoch)
            history = net.fit(stream, epochs=math.ceil(remaining / steps_per_epoch), steps_per_epoch=steps_per_epoch,
                              verbose=0, callbacks=[bridge])
            final_loss = float(history.history["loss"][-1]) if history.history.get("loss") else final_loss
        if bridge.stopped_by_request:
            r.print_summary(f"{PROJECT}: stopped at step {ckpt.position.global_step} after writing a checkpoint; "
                            "relaunch with --resume to continue")
            return 0
        probs = tf.sigmoid(net({"cat": held_out["cat"], "dense": held_out["dense"]})).numpy()
        base = np.full_like(probs, data.base_rate(rows["label"]))
        metrics = {"auc": roc_auc(held_out["label"], probs), "logloss": log_loss(held_out["label"], probs),
                   "baseline_logloss": log_loss(held_out["label"], base)}
        r.log({f"eval/{k}": v for k, v in metrics.items()}, ckpt.position.global_step)
        if config.export:
            def serve(cat, dense):
                logit = net({"cat": cat, "dense": dense})
                return {"logit": logit, "prob": tf.sigmoid(logit)}

            result = export.export_saved_model(serve, inputs, folder=r.export_dir, trackable=net, atol=1e-4)
            r.register_export(result.folder)
        latest = r.latest_checkpoint()
        if latest is not None:
            r.log_artifact(latest.path, "checkpoint")
        r.write_result(global_step=ckpt.position.global_step, final_loss=final_loss, eval_metrics=metrics)
        r.print_summary(f"{PROJECT}: auc {metrics['auc']:.4f}, logloss {metrics['logloss']:.4f} "
                        f"(baseline {metrics['baseline_logloss']:.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = f"tools/bazel run //ml/{PROJECT}:train --"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return train(parse_config(TrainConfig, args, prog=prog))
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
