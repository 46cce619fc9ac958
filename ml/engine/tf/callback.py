"""A Keras callback that bridges ``model.fit`` to an engine run: logging, stop requests, checkpoints.

Why: a Keras project should keep calling ``model.fit`` and still get what every engine trainer gets —
metrics into the run's MLflow/JSONL/TensorBoard/progress sinks (``run.log``, primary rank only), periodic
atomic checkpoints with the data position (``run.checkpoint_writer``), a clean checkpoint-and-stop on
SIGTERM/SIGINT (``run.should_stop``) and a hard ``max_steps`` so a resumed run ends exactly where an
uninterrupted one does.

The run is the engine core's object (``ml.engine.run.start(...)``); only these members are used:
``is_primary``, ``log(metrics, step)``, ``should_stop``, ``checkpoint_writer(step, meta)`` (a context
manager yielding a staging folder; entered on every rank, the primary writes) and ``resume_from`` (the
checkpoint ``--resume`` continues from: ``.path``, ``.step``, ``.meta``; or None).
"""

from __future__ import annotations

import keras

from ml.engine.errors import CheckpointError
from ml.engine.tf.checkpoint import DataPosition, KerasCheckpoint

__all__ = ["RunCallback", "resume"]


def resume(run, checkpoint: KerasCheckpoint) -> DataPosition:
    """Restore the checkpoint the run resumes from (``--resume``) into ``checkpoint``; returns the position."""
    found = run.resume_from
    if found is None:
        return checkpoint.position
    position = checkpoint.restore(found.path)
    if position.global_step != found.step:
        raise CheckpointError(
            f"checkpoint {found.path} is labelled step {found.step} but holds step {position.global_step}; it was "
            "written by another program: start without --resume"
        )
    return position


class RunCallback(keras.callbacks.Callback):
    """Counts optimizer steps into ``checkpoint``'s position and reports them to ``run``.

    Args:
        run: the engine run (see the module docstring).
        checkpoint: what is saved; its position advances once per training batch.
        max_steps: total optimizer steps of the whole run; training stops there.
        log_every: steps between ``run.log`` calls (the Keras logs of that batch plus epoch/step).
        checkpoint_every: steps between checkpoints (0: only at the end and on a stop request).
        meta: extra JSON-able fields stored with every checkpoint.
    """

    def __init__(self, run, checkpoint: KerasCheckpoint, *, max_steps: int, log_every: int = 10,
                 checkpoint_every: int = 0, meta: dict | None = None) -> None:
        super().__init__()
        if max_steps < 1 or log_every < 1 or checkpoint_every < 0:
            raise ValueError(
                f"need max_steps >= 1, log_every >= 1, checkpoint_every >= 0; got {max_steps}, {log_every}, "
                f"{checkpoint_every}"
            )
        self.run = run
        self.ckpt = checkpoint
        self.max_steps = int(max_steps)
        self.log_every = int(log_every)
        self.checkpoint_every = int(checkpoint_every)
        self.meta = dict(meta or {})
        self.stopped_by_request = False
        self._last_saved = -1

    def save(self) -> None:
        """Write a checkpoint of the current position through the run (primary rank only)."""
        pos = self.ckpt.position
        if pos.global_step == self._last_saved:
            return
        self._last_saved = pos.global_step
        meta = {**self.meta, "framework": "tensorflow", "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch}
        with self.run.checkpoint_writer(pos.global_step, meta) as folder:
            if self.run.is_primary:  # mirrored variables hold the same values on every rank
                self.ckpt.save(folder)

    def on_train_begin(self, logs=None) -> None:
        self._last_saved = self.ckpt.position.global_step
        if self.ckpt.position.global_step >= self.max_steps:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None) -> None:
        pos = self.ckpt.advance()
        step = pos.global_step
        if self.run.is_primary and (step % self.log_every == 0 or step == self.max_steps) and logs:
            metrics = {f"train/{k}": float(v) for k, v in logs.items()}
            metrics["train/epoch"] = float(pos.epoch)
            self.run.log(metrics, step)
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self.save()
        if self.run.should_stop:
            self.stopped_by_request = True
            self.save()
            self.model.stop_training = True
        elif step >= self.max_steps:
            self.save()
            self.model.stop_training = True

    def on_train_end(self, logs=None) -> None:
        self.save()
