"""TensorBoard event files for scalars, without importing TensorFlow.

torch.utils.tensorboard imports tensorflow when it is installed (~3 s at every run start and in every DDP
worker, measured here). TensorBoard's writer only needs TF for file I/O, and TensorBoard itself ships a
TF-free path that it takes when the module `tensorboard.compat.notf` exists (its "notf" build). We register
that marker before the first write, so the writer uses TensorBoard's own I/O stub. The files are ordinary
`events.out.tfevents.*` files that `tensorboard --logdir` reads.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

__all__ = ["ScalarWriter"]


def _prefer_tf_free_io() -> None:
    if "tensorflow" not in sys.modules and "tensorboard.compat.notf" not in sys.modules:
        sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")


class ScalarWriter:
    def __init__(self, logdir: Path) -> None:
        _prefer_tf_free_io()
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self._writer = EventFileWriter(str(logdir))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
