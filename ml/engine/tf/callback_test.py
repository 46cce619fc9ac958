"""The Keras callback on a real engine run: MLflow/JSONL logging, checkpoints, SIGTERM stop and exact resume."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml.engine import run
from ml.engine.tf import callback, checkpoint

STEPS, SPE = 12, 5


@dataclass
class TinyConfig:
    lr: float = 0.01
    resume: bool = False
    run_dir: str | None = None
    run_name: str | None = None
    experiment: str | None = None
    keep_checkpoints: int = 2
    log_every: int = 1


def _dataset(start_epoch: int, skip: int) -> tf.data.Dataset:
    def gen():
        epoch, first = start_epoch, skip
        while True:
            rng = np.random.default_rng(epoch)
            x = rng.standard_normal((SPE * 8, 3)).astype(np.float32)
            y = x.sum(1, keepdims=True)
            for b in range(first, SPE):
                yield x[b * 8:(b + 1) * 8], y[b * 8:(b + 1) * 8]
            epoch, first = epoch + 1, 0

    return tf.data.Dataset.from_generator(gen, output_signature=(tf.TensorSpec([8, 3], tf.float32),
                                                                 tf.TensorSpec([8, 1], tf.float32)))


class StopAt(keras.callbacks.Callback):
    """Sends this process SIGTERM after a given step, as a scheduler's preemption would."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.count = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        if self.count == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _train(folder, *, resume: bool = False, stop_at: int | None = None):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    cfg = TinyConfig(resume=resume, run_dir=str(folder), run_name=folder.name)
    with run.start(cfg, project="tf_callback_test") as r:
        ckpt = checkpoint.KerasCheckpoint(net, net.optimizer, steps_per_epoch=SPE)
        net.optimizer.build(net.trainable_variables)
        pos = callback.resume(r, ckpt)
        bridge = callback.RunCallback(r, ckpt, max_steps=STEPS, log_every=1, checkpoint_every=4)
        extra = [StopAt(stop_at)] if stop_at else []
        net.fit(_dataset(pos.epoch, pos.batch_in_epoch), epochs=-(-(STEPS - pos.global_step) // SPE),
                steps_per_epoch=SPE, verbose=0, callbacks=[*extra, bridge])
        stopped = r.should_stop
    return net, ckpt.position, stopped


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def test_fit_logs_checkpoints_and_resumes_exactly_after_sigterm(tmp_path):
    straight, pos, stopped = _train(tmp_path / "straight")
    assert pos == checkpoint.DataPosition(epoch=2, batch_in_epoch=2, global_step=STEPS) and not stopped
    logged = [json.loads(line) for line in (tmp_path / "straight" / "tracking.jsonl").read_text().splitlines()]
    steps = sorted({rec["step"] for rec in logged if "train/loss" in rec.get("metrics", {})})
    assert steps == list(range(1, STEPS + 1)), steps
    ckpts = sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir() if p.is_dir())
    assert len(ckpts) == 2 and ckpts[-1].endswith(str(STEPS)), ckpts

    _, pos, stopped = _train(tmp_path / "killed", stop_at=7)
    assert stopped and pos.global_step == 7
    resumed, pos, stopped = _train(tmp_path / "killed", resume=True)
    assert pos.global_step == STEPS and not stopped
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
