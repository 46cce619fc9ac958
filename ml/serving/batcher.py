"""Dynamic batching for mlenv's model server: one queue per model version, drained by model threads.

A module of its own because its policy (when an idle instance runs what is queued, when it waits) and its
shutdown are the subtle part of the server, tested directly without gRPC.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections import deque

import grpc
import numpy as np

from ml.serving.metrics import Metrics
from ml.serving.protocol import RequestError

__all__ = ["DEFAULT_QUEUED_BATCHES", "DynamicBatcher"]

DEFAULT_QUEUED_BATCHES = 8  # default queue bound, in full batches per instance


class _Pending:
    """One request waiting in a batcher. `done` is a plain lock held until the result (or error) is set:
    cheaper to create and to wait on than a threading.Event, and this path runs once per request."""

    __slots__ = ("inputs", "rows", "enqueued", "done", "outputs", "error")

    def __init__(self, inputs: list[np.ndarray], rows: int) -> None:
        self.inputs, self.rows = inputs, rows
        self.enqueued = time.monotonic()
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.outputs: list[np.ndarray] | None = None
        self.error: BaseException | None = None


class DynamicBatcher:
    """Queues the requests for one model version and runs them in batches on `instances` model threads.

    Policy ("batch what queued up while the model was busy"): an idle instance takes everything queued (up to
    max_batch_size rows) at once. It waits only while requests for this model are still being decoded by
    other handler threads (`reserve()`d but not yet `submit()`ed), because those will join the queue within
    microseconds; and never longer than max_queue_delay after the oldest queued request arrived. So a lone
    request runs immediately, and under load batches form by themselves from what arrived while every
    instance was busy: max_queue_delay is an upper bound on waiting for company, not a fixed cost.

    `model` is a runtime model (ml/serving/runtimes: `.run(arrays) -> arrays`, `.instance()`, `.device`).
    Instances share that one object: every runtime's models are safe to call from several threads (inference
    only, no state is written), and one copy of the weights stays in memory. How far instances overlap is
    the runtime's matter (its module docstring says).
    """

    def __init__(self, name: str, model, max_batch_size: int, max_delay_s: float, metrics: Metrics,
                 instances: int = 1, max_queued_rows: int | None = None) -> None:
        if instances < 1:
            raise ValueError(f"model {name}: instances must be at least 1, got {instances}")
        self.name, self.model, self.max_rows, self.max_delay = name, model, max_batch_size, max_delay_s
        # Work waiting for a model thread is bounded: past this many queued rows a request is refused with
        # RESOURCE_EXHAUSTED at once (the client backs off or goes elsewhere) instead of queueing memory and
        # latency without end. The default lets every instance find a full batch waiting, several times over.
        self.max_queued_rows = max_queued_rows or DEFAULT_QUEUED_BATCHES * max_batch_size * instances
        if self.max_queued_rows < max_batch_size:
            raise ValueError(f"model {name}: max_queued_rows {self.max_queued_rows} is below max_batch_size "
                             f"{max_batch_size}: no full batch could ever queue; raise it")
        self.instances = instances
        self.device = model.device
        self._queue_gauge = metrics.queue.labels(name)
        self._batch_hist = metrics.batch.labels(name)
        self._queue: deque[_Pending] = deque()
        self._rows = 0  # rows in self._queue, kept so the hot path never sums the queue
        self._arriving = 0  # reserve()d requests not yet submitted or cancelled
        self._cv = threading.Condition(threading.Lock())
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"model-{name}-{i}", daemon=True)
                         for i in range(instances)]
        for thread in self._threads:
            thread.start()

    def reserve(self) -> None:
        """Announces a request that will `submit()` (or `cancel()`) shortly; see the class docstring.

        A reserved request is always accepted, even once close() began: close() waits for it. That is what
        lets a hot reload retire this version while requests that already picked it are still decoding."""
        with self._cv:
            self._arriving += 1

    def cancel(self) -> None:
        """A reserved request will not be submitted after all (its input was refused)."""
        with self._cv:
            self._arriving -= 1
            self._cv.notify_all()  # a waiting instance may now have everything in flight queued

    def submit(self, inputs: list[np.ndarray], rows: int, timeout: float | None, *,
               reserved: bool = False) -> list[np.ndarray]:
        item = _Pending(inputs, rows)
        with self._cv:
            if reserved:
                self._arriving -= 1
            elif self._closed:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name} is unloading; retry")
            if self._queue and self._rows + rows > self.max_queued_rows:
                if reserved:
                    self._cv.notify_all()  # one fewer arrival: waiting instances (or a close()) re-check
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"the queue of model {self.name} is full ({self._rows} rows waiting, bound "
                                   f"{self.max_queued_rows}): the server is overloaded; retry with backoff")
            self._queue.append(item)
            self._rows += rows
            self._queue_gauge.set(len(self._queue))
            # While closing, every instance must re-check: the last reserved request arriving means they may
            # all stop once the queue is empty (notify() would wake one and leave the rest waiting forever).
            if self._closed:
                self._cv.notify_all()
            else:
                self._cv.notify()
        if not item.done.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            with self._cv:
                if item.done.acquire(blocking=False):  # finished just now after all
                    pass
                else:
                    try:
                        self._queue.remove(item)  # still queued: never run it
                        self._rows -= item.rows
                        self._queue_gauge.set(len(self._queue))
                    except ValueError:
                        pass  # already running: its result is dropped
                    raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       "deadline passed while waiting for the model")
        if item.error is not None:
            raise item.error
        return item.outputs

    def close(self, timeout: float = 30.0) -> None:
        """Stops the instances once the queue is empty and no reserved request is left to arrive; waits up to
        `timeout` seconds in all (not per thread) for them to finish what they hold."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def alive_instances(self) -> int:
        """Model threads still running (0 once close() has finished): for leak checks in tests and benchmarks."""
        return sum(thread.is_alive() for thread in self._threads)

    def _ready(self) -> bool:
        """Whether an idle instance should take a batch now rather than wait for more requests."""
        return (self._rows >= self.max_rows or self._arriving <= 0 or self._closed
                or 2 * self._queue[0].rows >= self.max_rows)  # a large request gains little from company

    def _take_batch(self) -> list[_Pending]:
        with self._cv:
            while True:
                if not self._queue:
                    if self._closed and self._arriving <= 0:
                        self._cv.notify_all()  # the other instances stop too, not wait for a request that never comes
                        return []
                    self._cv.wait()
                    continue
                if self._ready():
                    break
                left = self._queue[0].enqueued + self.max_delay - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            queue = self._queue
            item = queue.popleft()
            batch, rows = [item], item.rows
            while queue and rows + queue[0].rows <= self.max_rows:
                item = queue.popleft()
                batch.append(item)
                rows += item.rows
            self._rows -= rows
            if queue:
                self._cv.notify()  # more than one batch queued: another idle instance takes the rest
            self._queue_gauge.set(len(queue))
            return batch

    def _run(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            # Inputs decoded straight from the request's bytes are read-only views; the model gets its own
            # writable copy, so a model that writes into its inputs can never touch the request's memory.
            joined = [a if a.flags.writeable else a.copy() for a in batch[0].inputs]
        else:
            joined = [np.concatenate([p.inputs[i] for p in batch]) for i in range(len(batch[0].inputs))]
        arrays = self.model.run(joined)
        self._batch_hist.observe(sum(p.rows for p in batch))
        if len(batch) == 1:
            batch[0].outputs = arrays
            return
        start = 0
        for item in batch:
            end = start + item.rows
            item.outputs = [a[start:end] for a in arrays]
            start = end

    def _loop(self) -> None:
        with self.model.instance():  # per-thread runtime state, e.g. this instance's own CUDA stream
            self._serve()

    def _serve(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - a failing batch fails its requests, never the server
                for item in batch:
                    item.error = RequestError(grpc.StatusCode.INTERNAL, f"model {self.name} failed: {exc}")
            for item in batch:
                item.done.release()
