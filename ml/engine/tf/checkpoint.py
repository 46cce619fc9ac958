"""TensorFlow checkpoints of model, optimizer and data position, written into a folder the run hands out.

Why: exact resume needs the weights, the optimizer's slots and iteration count, and where the data stream
stood (epoch, batches of that epoch already consumed, global step). ``tf.train.Checkpoint`` tracks all of
them as one object graph; ``tf.train.CheckpointManager`` writes it into the staging folder that the
engine's framework-neutral ``checkpoint_writer`` fsyncs and renames atomically, so this module only ever
writes inside a folder it is given and reads one back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from ml.engine.errors import CheckpointError

__all__ = ["DataPosition", "KerasCheckpoint"]


@dataclass(frozen=True)
class DataPosition:
    """Where training stands: epoch, batches of that epoch already consumed, optimizer steps taken."""

    epoch: int
    batch_in_epoch: int
    global_step: int


class KerasCheckpoint:
    """Model + optimizer + data position as one ``tf.train.Checkpoint``.

    The position lives in int64 ``tf.Variable`` s so it is saved and restored with the weights (never out of
    step with them). Call :meth:`advance` once per optimizer step.
    """

    def __init__(self, model, optimizer, *, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise CheckpointError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.model = model
        self.optimizer = optimizer
        self.steps_per_epoch = int(steps_per_epoch)
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self._batch = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_in_epoch")
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._ckpt = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self._epoch, batch_in_epoch=self._batch, global_step=self._step
        )

    @property
    def position(self) -> DataPosition:
        return DataPosition(int(self._epoch.numpy()), int(self._batch.numpy()), int(self._step.numpy()))

    def advance(self) -> DataPosition:
        """Count one optimizer step; an epoch that is complete rolls over to the next one."""
        self._step.assign_add(1)
        self._batch.assign_add(1)
        if int(self._batch.numpy()) >= self.steps_per_epoch:
            self._batch.assign(0)
            self._epoch.assign_add(1)
        return self.position

    def save(self, folder: str | Path) -> Path:
        """Write the checkpoint into ``folder`` (the run's staging folder); returns the checkpoint prefix."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manager = tf.train.CheckpointManager(self._ckpt, str(folder), max_to_keep=1, checkpoint_name="ckpt")
        return Path(manager.save(checkpoint_number=int(self._step.numpy())))

    def restore(self, folder: str | Path) -> DataPosition:
        """Restore model, optimizer and position from a folder :meth:`save` wrote; errors name what is wrong."""
        prefix = tf.train.latest_checkpoint(str(folder))
        if prefix is None:
            raise CheckpointError(
                f"no TensorFlow checkpoint in {folder}; it was not written by KerasCheckpoint.save (a PyTorch run's "
                "checkpoint, or a torn copy): start without --resume or point at a TensorFlow run"
            )
        if self.optimizer is not None and not self.optimizer.built:
            # Slots must exist before restore or their values are silently dropped.
            self.optimizer.build(self.model.trainable_variables)
        try:
            status = self._ckpt.restore(prefix)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            raise CheckpointError(
                f"checkpoint {prefix} does not fit this model/optimizer ({exc}); it was made by another architecture "
                "or config: start a fresh run or resume with the config that made it"
            ) from exc
        return self.position
