"""mlenv's model server: Open Inference Protocol (KServe v2) over gRPC, serving verified model bundles.

    tools/bazel run //ml/homefeed:serve                        # the homefeed bundle on 127.0.0.1:8001
    python -m ml.serving.server --repository DIR --port 8001 --metrics-port 8002

- Several models and versions at once: `--bundle PATH` (repeatable) and/or `--repository DIR` holding
  `<model>/<version>/bundle.json`; a request without a version gets the newest (numeric versions compare
  as numbers).
- Hot reload: the repository is rescanned every `--poll-seconds` (and on SIGHUP). A new version is verified,
  loaded and checked against its golden batch BEFORE it becomes visible; requests already running keep the
  model object they started with, so none fails. `--keep-versions N` retires older versions.
- Dynamic batching per model version: an idle model instance runs what is queued at once (a lone request
  never waits); requests that arrive while every instance is busy queue up and run together, up to the
  bundle's max_batch_size rows. max_queue_delay_us only bounds how long a batch waits for requests that
  are already being decoded. `--instances N` model threads per version share the queue (default 1);
  `--torch-threads` sets torch's intra-op threads per instance (default $OMP_NUM_THREADS, else
  cores / instances), so N x threads should not exceed the cores the server may use. Which N is best
  depends on the requests (docs/benchmarks.md, 4 cores, homefeed): small ones batch best on 1 instance
  (B=1, 8 clients: 1,920 req/s with 1, 1,261 with 4); large ones gain from more (B=32: 337 with 1, 780 with
  4, 828 with 2 x 2 threads). On a GPU, 1 instance already batched 8-32 clients into 2.5-4x kserve.
- Bad input never takes the server down: unknown model/version -> NOT_FOUND; wrong tensor names, dtypes,
  shapes or byte sizes -> INVALID_ARGUMENT with a message naming the tensor; oversize messages ->
  RESOURCE_EXHAUSTED (gRPC's own limit, --max-message-bytes). A tampered bundle is refused at load.
- `--device cuda[:N]` serves on a GPU: the golden batch is replayed there at load (--golden-atol where its
  kernels round differently from the CPU that wrote the golden outputs), each instance runs its batches on
  its own CUDA stream, and batching matters most there (one kernel launch sequence for many requests).
- Prometheus metrics on --metrics-port (requests, latency histogram, batch sizes, errors, queue depth).
- SIGTERM/SIGINT: readiness goes false, new requests are refused, in-flight ones finish (--drain-seconds),
  then the process exits 0.
- Binds 127.0.0.1 unless --host says otherwise; TLS with --tls-cert/--tls-key.
"""

from __future__ import annotations

import _thread
import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ml.serving import bundle as bundles
from ml.serving.proto import inference_pb2 as pb
from ml.serving.proto import inference_pb2_grpc as pb_grpc

__all__ = ["InferenceServer", "ModelRepository", "main"]

log = logging.getLogger("mlenv.serving")
SERVER_NAME = "mlenv"
UNKNOWN_MODEL_LABEL = "_unknown"  # the metrics' model label for requests that named no loaded model
SERVER_VERSION = "1"

# Open Inference Protocol datatype <-> numpy
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
TORCH_TO_OIP = {"bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}
CONTENTS_FIELD = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                  "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents"}
CONFIG_TYPES = {"BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
                "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12}


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlenv_inference_requests", "inference requests by outcome", ["model", "version", "code"],
                                registry=self.registry)
        self.latency = Histogram("mlenv_inference_latency_seconds", "end-to-end ModelInfer latency", ["model"],
                                 buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5),
                                 registry=self.registry)
        self.batch = Histogram("mlenv_batch_size_rows", "rows per executed batch", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)
        self.queue = Gauge("mlenv_queue_depth", "requests waiting for a batch", ["model"], registry=self.registry)
        self.loaded = Gauge("mlenv_model_loaded", "1 per loaded model version", ["model", "version"],
                            registry=self.registry)


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

    Instances share one model object: TorchScript and torch.export modules are safe to call from several
    threads (inference only, no state is written), and one copy of the weights stays in memory. TorchScript
    runs its graph without the GIL, so N instances use up to N x --torch-threads cores; a torch.export
    module steps through its graph in Python, so its instances overlap less.
    """

    def __init__(self, name: str, model, max_batch_size: int, max_delay_s: float, metrics: Metrics,
                 instances: int = 1, device: torch.device | None = None) -> None:
        if instances < 1:
            raise ValueError(f"model {name}: instances must be at least 1, got {instances}")
        self.name, self.model, self.max_rows, self.max_delay = name, model, max_batch_size, max_delay_s
        self.instances = instances
        self.device = device if device is not None else torch.device("cpu")
        self._on_cpu = self.device.type == "cpu"
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
            self._queue.append(item)
            self._rows += rows
            self._queue_gauge.set(len(self._queue))
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

    def close(self) -> None:
        """Stops the instances once the queue is empty and no reserved request is left to arrive."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def _ready(self) -> bool:
        """Whether an idle instance should take a batch now rather than wait for more requests."""
        return (self._rows >= self.max_rows or self._arriving <= 0 or self._closed
                or 2 * self._queue[0].rows >= self.max_rows)  # a large request gains little from company

    def _take_batch(self) -> list[_Pending]:
        with self._cv:
            while True:
                if not self._queue:
                    if self._closed and self._arriving <= 0:
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
        with torch.inference_mode():
            tensors = [torch.from_numpy(a) for a in joined]
            if not self._on_cpu:
                tensors = [t.to(self.device) for t in tensors]
            out = self.model(*tensors)
        out = out if isinstance(out, (tuple, list)) else (out,)
        arrays = [t.detach().cpu().numpy() for t in out]
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
        if self.device.type == "cuda":
            # Each instance queues its batches on its own stream, so one instance's copies and kernels can
            # overlap another's; .cpu() on the outputs waits for this stream only.
            with torch.cuda.stream(torch.cuda.Stream(self.device)):
                self._serve()
        else:
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


@dataclass(frozen=True)
class _InputSpec:
    """One input of a model's signature, resolved once at load so decoding a request does no lookups."""

    name: str
    datatype: str  # Open Inference Protocol name, e.g. FP32
    dtype: np.dtype  # little-endian, as the wire carries it
    shape: tuple[int, ...]  # -1: any size
    fixed: tuple[tuple[int, int], ...]  # (axis, size) for every axis that is not -1
    contents_field: str  # InferTensorContents field for clients that send typed values


def _input_spec(t: dict) -> _InputSpec:
    datatype = TORCH_TO_OIP.get(t["dtype"], t["dtype"].upper())
    if datatype not in DTYPES:
        raise bundles.BundleError(f"input {t['name']}: dtype {t['dtype']} cannot be served over the Open "
                                  f"Inference Protocol; use one of {', '.join(TORCH_TO_OIP)}")
    shape = tuple(int(d) for d in t["shape"])
    return _InputSpec(t["name"], datatype, DTYPES[datatype].newbyteorder("<"), shape,
                      tuple((i, d) for i, d in enumerate(shape) if d != -1),
                      CONTENTS_FIELD.get(datatype, "bytes_contents"))


class LoadedModel:
    """A served model version: bundle, model, batcher, and what every request needs precomputed."""

    def __init__(self, bundle: bundles.Bundle, module: Any, batcher: DynamicBatcher, metrics: Metrics) -> None:
        self.bundle, self.module, self.batcher = bundle, module, batcher
        self.input_specs = tuple(_input_spec(t) for t in self.inputs)
        self.input_names = [t.name for t in self.input_specs]
        self.input_index = {t.name: i for i, t in enumerate(self.input_specs)}
        self.output_names = [t["name"] for t in self.outputs]
        self.latency = metrics.latency.labels(bundle.name)
        self._requests = metrics.requests
        self._counters: dict[str, Any] = {}  # status code -> Counter child (a handful at most)

    @property
    def inputs(self) -> list[dict]:
        return self.bundle.signature["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.bundle.signature["outputs"]

    def count(self, code: grpc.StatusCode) -> None:
        counter = self._counters.get(code.name)
        if counter is None:
            counter = self._counters[code.name] = self._requests.labels(self.bundle.name, self.bundle.version,
                                                                          code.name)
        counter.inc()


def _version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class ModelRepository:
    """Loaded models by name and version; loading verifies hashes and replays the golden batch first."""

    def __init__(self, metrics: Metrics, *, keep_versions: int = 0, max_delay_override_us: int | None = None,
                 max_batch_override: int | None = None, instances: int = 1, device: str = "cpu",
                 golden_atol: float | None = None) -> None:
        if instances < 1:
            raise ValueError(f"instances must be at least 1 (model threads per version), got {instances}")
        self.device = bundles.resolve_device(device)
        self.golden_atol = golden_atol
        self.metrics = metrics
        self.keep_versions = keep_versions
        self.instances = instances
        self.max_delay_override_us, self.max_batch_override = max_delay_override_us, max_batch_override
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._lock = threading.Lock()
        self.failed: dict[str, str] = {}  # bundle path -> why it was refused

    def load(self, path: Path) -> LoadedModel:
        b = bundles.verify(path)
        module = bundles.load_model(b, str(self.device))
        bundles.check_golden(b, module, device=str(self.device), atol=self.golden_atol)
        serving = b.manifest.get("serving", {})
        max_rows = self.max_batch_override or int(serving.get("max_batch_size", 256))
        delay_us = self.max_delay_override_us if self.max_delay_override_us is not None else int(serving.get("max_queue_delay_us", 2000))
        batcher = DynamicBatcher(f"{b.name}/{b.version}", module, max_rows, delay_us / 1e6, self.metrics,
                                 self.instances, self.device)
        try:
            loaded = LoadedModel(b, module, batcher, self.metrics)
        except Exception:
            batcher.close()
            raise
        retired = []
        with self._lock:
            versions = self._models.setdefault(b.name, {})
            old = versions.get(b.version)
            versions[b.version] = loaded
            if old is not None:
                retired.append(old)
            if self.keep_versions:
                for v in sorted(versions, key=_version_key)[:-self.keep_versions]:
                    retired.append(versions.pop(v))
        self.metrics.loaded.labels(b.name, b.version).set(1)
        for model in retired:
            self._retire(model)
        log.info("loaded %s version %s from %s", b.name, b.version, path)
        return loaded

    def _retire(self, model: LoadedModel) -> None:
        # Requests that already hold `model` finish: the batcher drains its queue before it stops.
        threading.Thread(target=model.batcher.close, daemon=True).start()
        if not any(m is model for v in self._models.values() for m in v.values()):
            self.metrics.loaded.labels(model.bundle.name, model.bundle.version).set(0)

    def get(self, name: str, version: str = "") -> LoadedModel:
        with self._lock:
            return self._get(name, version)

    def _get(self, name: str, version: str) -> LoadedModel:
        """The model for name/version (newest when version is empty); the caller holds self._lock."""
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(sorted(self._models)) or "none"
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; loaded models: {known}")
        if not version:
            return versions[max(versions, key=_version_key)]
        if version not in versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version!r}; loaded "
                                                          f"versions: {', '.join(sorted(versions, key=_version_key))}")
        return versions[version]

    def acquire(self, name: str, version: str = "") -> LoadedModel:
        """get() for a request that will submit to the model's batcher: reserves its place there (see
        DynamicBatcher.reserve) under the same lock a reload swaps versions under, so a version retired
        right after this returns still runs the request. Follow with submit(..., reserved=True) or cancel()."""
        with self._lock:
            model = self._get(name, version)
            model.batcher.reserve()
            return model

    def versions(self, name: str) -> list[str]:
        with self._lock:
            return sorted(self._models.get(name, {}), key=_version_key)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def scan(self, root: Path) -> None:
        """Loads every <model>/<version>/bundle.json under root that is new or changed."""
        for manifest in sorted(root.glob("*/*/bundle.json")):
            path = manifest.parent
            key = str(path)
            stamp = f"{manifest.stat().st_mtime_ns}"
            if self.failed.get(key, "").startswith(stamp + ":"):
                continue
            name, version = path.parent.name, path.name
            with self._lock:
                current = self._models.get(name, {}).get(version)
            if current is not None and current.bundle.path == path:
                continue
            try:
                self.load(path)
            except Exception as exc:  # noqa: BLE001 - a bad bundle is refused; the server keeps serving
                self.failed[key] = f"{stamp}:{exc}"
                log.error("refused %s: %s", path, exc)

    def close(self) -> None:
        with self._lock:
            models = [m for v in self._models.values() for m in v.values()]
        for model in models:
            model.batcher.close()


_LITTLE_ENDIAN = sys.byteorder == "little"
_OIP_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items()}


def _decode_inputs(request: pb.ModelInferRequest, model: LoadedModel, max_rows: int) -> tuple[list[np.ndarray], int]:
    """The request's tensors as arrays in signature order, and its row count; RequestError names what is wrong.

    Raw contents become read-only views of the request's bytes (no copy here): the batcher copies them once,
    into the batch it hands the model, so the request's memory is never written."""
    tensors = request.inputs
    names = [t.name for t in tensors]
    order = None  # positions in the request of the signature's inputs, when the client used another order
    if names != model.input_names:
        expected = model.input_names
        missing = [n for n in expected if n not in names]
        unknown = [n for n in names if n not in model.input_index]
        duplicated = len(set(names)) != len(names)
        if missing or unknown or duplicated:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model {model.bundle.name} takes inputs {expected}; missing {missing}, unknown "
                               f"{unknown}" + (", duplicated names" if duplicated else ""))
        order = [names.index(n) for n in expected]
    raw = request.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{len(raw)} raw_input_contents for {len(tensors)} inputs: send one per input")
    arrays: list[np.ndarray] = []
    rows = None
    for spec, i in zip(model.input_specs, order or range(len(tensors))):
        tensor = tensors[i]
        if tensor.datatype != spec.datatype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {spec.name}: datatype {tensor.datatype}, the model expects {spec.datatype}")
        shape = tuple(tensor.shape)
        if len(shape) != len(spec.shape) or any(shape[axis] != size for axis, size in spec.fixed) or \
                (shape and min(shape) < 0):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {spec.name}: shape {list(shape)}, the model expects {list(spec.shape)} "
                               f"(-1 = any)")
        count = math.prod(shape)
        if raw:
            data = raw[i]
            if len(data) != count * spec.dtype.itemsize:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {spec.name}: {len(data)} bytes of raw contents, shape {list(shape)} of "
                                   f"{spec.datatype} needs {count * spec.dtype.itemsize}")
            array = np.frombuffer(data, dtype=spec.dtype).reshape(shape)
        else:
            values = getattr(tensor.contents, spec.contents_field)
            if len(values) != count:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {spec.name}: {len(values)} values in contents, shape {list(shape)} "
                                   f"needs {count}")
            array = np.asarray(values, dtype=spec.dtype).reshape(shape)
        if rows is None:
            rows = shape[0] if shape else 0
        elif not shape or shape[0] != rows:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {spec.name} has {shape[0] if shape else 0} rows, other inputs {rows}: one "
                               f"batch size per request")
        arrays.append(array)
    if not rows or rows > max_rows:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch of {rows} rows; model {model.bundle.name} accepts 1..{max_rows} per request")
    return arrays, rows


def _encode_outputs(request: pb.ModelInferRequest, model: LoadedModel, outputs: list[np.ndarray]
                    ) -> pb.ModelInferResponse:
    wanted = [o.name for o in request.outputs]
    tensors, contents = [], []
    for name, array in zip(model.output_names, outputs):
        if wanted and name not in wanted:
            continue
        datatype = _OIP_OF_DTYPE.get(array.dtype.newbyteorder("="))
        if datatype is None:
            raise RequestError(grpc.StatusCode.INTERNAL, f"model {model.bundle.name} returned output {name} as "
                                                         f"{array.dtype}, which the protocol cannot carry")
        if not _LITTLE_ENDIAN:
            array = array.astype(array.dtype.newbyteorder("<"))
        tensors.append(pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape))
        contents.append(array.tobytes())  # row-major whatever the array's layout
    return pb.ModelInferResponse(model_name=model.bundle.name, model_version=model.bundle.version, id=request.id,
                                 outputs=tensors, raw_output_contents=contents)


def instance_group(model: LoadedModel) -> pb.ModelInstanceGroup:
    """The model's instances as Triton's ModelConfig describes them: how many, on which device."""
    device = model.batcher.device
    group = pb.ModelInstanceGroup(name=f"{model.bundle.name}_{model.bundle.version}", count=model.batcher.instances)
    if device.type == "cuda":
        group.kind = pb.ModelInstanceGroup.KIND_GPU
        group.gpus.append(device.index or 0)
    else:
        group.kind = pb.ModelInstanceGroup.KIND_CPU
    return group


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, metrics: Metrics) -> None:
        self.repository, self.metrics = repository, metrics
        self.draining = threading.Event()
        self.ready = threading.Event()

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready.is_set() and not self.draining.is_set())

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["model_configuration"])

    def _model(self, name: str, version: str, context) -> LoadedModel | None:
        try:
            return self.repository.get(name, version)
        except RequestError as exc:
            context.abort(exc.code, str(exc))

    def ModelReady(self, request, context):
        try:
            self.repository.get(request.name, request.version)
            return pb.ModelReadyResponse(ready=not self.draining.is_set())
        except RequestError:
            return pb.ModelReadyResponse(ready=False)

    def ModelMetadata(self, request, context):
        model = self._model(request.name, request.version, context)

        def meta(t):
            return pb.ModelMetadataResponse.TensorMetadata(name=t["name"], shape=t["shape"],
                                                           datatype=TORCH_TO_OIP.get(t["dtype"], t["dtype"].upper()))

        return pb.ModelMetadataResponse(name=model.bundle.name, versions=self.repository.versions(model.bundle.name),
                                        platform="pytorch_" + model.bundle.manifest.get("artifact_format", "torchscript"),
                                        inputs=[meta(t) for t in model.inputs], outputs=[meta(t) for t in model.outputs])

    def ModelConfig(self, request, context):
        model = self._model(request.name, request.version, context)

        def dims(t):
            return t["shape"][1:]

        config = pb.ModelConfig(
            name=model.bundle.name, platform="pytorch_libtorch", backend="mlenv",
            max_batch_size=model.batcher.max_rows,
            input=[pb.ModelInput(name=t["name"], data_type=CONFIG_TYPES[TORCH_TO_OIP[t["dtype"]]], dims=dims(t))
                   for t in model.inputs],
            output=[pb.ModelOutput(name=t["name"], data_type=CONFIG_TYPES[TORCH_TO_OIP[t["dtype"]]], dims=dims(t))
                    for t in model.outputs],
            instance_group=[instance_group(model)],
            dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=int(model.batcher.max_delay * 1e6)))
        return pb.ModelConfigResponse(config=config)

    def ModelInfer(self, request, context):
        start = time.perf_counter()
        model, reserved, code = None, False, grpc.StatusCode.OK
        try:
            if self.draining.is_set():
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); retry elsewhere")
            model = self.repository.acquire(request.model_name, request.model_version)
            reserved = True
            inputs, rows = _decode_inputs(request, model, model.batcher.max_rows)
            if request.outputs:
                unknown = [o.name for o in request.outputs if o.name not in model.output_names]
                if unknown:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"unknown outputs {unknown}; model has {model.output_names}")
            remaining = context.time_remaining()  # huge (not None) when the client set no deadline
            reserved = False  # submit() takes the reservation over, whatever happens in it
            outputs = model.batcher.submit(inputs, rows, min(remaining if remaining is not None else 300.0, 300.0),
                                           reserved=True)
            return _encode_outputs(request, model, outputs)
        except RequestError as exc:
            code = exc.code
            context.abort(exc.code, str(exc))
        except Exception:
            code = grpc.StatusCode.UNKNOWN  # a bug of ours: counted, and gRPC reports it to the client
            raise
        finally:
            if reserved:
                model.batcher.cancel()
            if model is not None:
                model.count(code)
                model.latency.observe(time.perf_counter() - start)
            else:
                # Names a client made up never become label values: one series each would let any client
                # grow the metrics without bound. Requests that found no model share one series.
                self.metrics.requests.labels(UNKNOWN_MODEL_LABEL, "", code.name).inc()
                self.metrics.latency.labels(UNKNOWN_MODEL_LABEL).observe(time.perf_counter() - start)


@dataclass
class InferenceServer:
    """A running server (gRPC + metrics). `stop()` drains; used by tests, benchmarks and main()."""

    servicer: Servicer
    grpc_server: grpc.Server
    port: int
    metrics_port: int | None
    repository: ModelRepository
    _metrics_http: Any = None

    def stop(self, grace: float = 10.0) -> None:
        self.servicer.draining.set()
        self.grpc_server.stop(grace).wait()
        self.repository.close()
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()


def start(*, bundles_to_load: list[Path] = (), repository_dir: Path | None = None, host: str = "127.0.0.1",
          port: int = 0, metrics_port: int | None = 0, workers: int = 16, max_message_bytes: int = 64 << 20,
          tls_cert: Path | None = None, tls_key: Path | None = None, keep_versions: int = 0,
          max_queue_delay_us: int | None = None, max_batch_size: int | None = None,
          instances: int = 1, device: str = "cpu", golden_atol: float | None = None) -> InferenceServer:
    """Loads the models and starts serving. `instances`: model threads per model version (see DynamicBatcher);
    torch's intra-op thread count is process-wide and left to the caller (main() sets it)."""
    metrics = Metrics()
    repository = ModelRepository(metrics, keep_versions=keep_versions, max_delay_override_us=max_queue_delay_us,
                                 max_batch_override=max_batch_size, instances=instances, device=device,
                                 golden_atol=golden_atol)
    for path in bundles_to_load:
        repository.load(Path(path))  # a bad bundle given explicitly is fatal: say so before serving
    if repository_dir is not None:
        repository.scan(Path(repository_dir))
    servicer = Servicer(repository, metrics)
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if tls_cert and tls_key:
        credentials = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"could not bind {address}")
    server.start()
    http = None
    if metrics_port is not None:
        http = start_http_server(metrics_port, addr=host, registry=metrics.registry)
        metrics_port = http[0].server_port
    servicer.ready.set()
    return InferenceServer(servicer, server, bound, metrics_port, repository, http)


DEFAULT_INSTANCES = 1


def default_torch_threads(instances: int) -> int:
    """Intra-op threads per instance: $OMP_NUM_THREADS when the operator set it (torch itself honours it),
    else this process's usable cores shared among the instances, so that busy instances do not oversubscribe
    the cores (each instance's torch ops run on their own team of threads)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // instances)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", default=[], type=Path, help="a bundle folder to serve (repeatable)")
    parser.add_argument("--repository", type=Path, help="folder of <model>/<version>/bundle.json, rescanned for new versions")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (0: pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port (-1: off)")
    parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    parser.add_argument("--max-message-bytes", type=int, default=64 << 20, help="largest request accepted")
    parser.add_argument("--max-batch-size", type=int, help="override the bundles' max batch size")
    parser.add_argument("--max-queue-delay-us", type=int,
                        help="override the bundles' max queue delay: the longest a queued request waits for requests "
                             "still being decoded to join its batch (a lone request never waits)")
    parser.add_argument("--instances", type=int, default=DEFAULT_INSTANCES,
                        help=f"model threads per model version, taking batches from one queue (default "
                             f"{DEFAULT_INSTANCES}): while one runs a batch the next batch forms and starts on another")
    parser.add_argument("--torch-threads", type=int,
                        help="torch intra-op threads per instance (default: $OMP_NUM_THREADS if set, else the "
                             "usable cores divided by --instances, at least 1)")
    parser.add_argument("--device", default="cpu",
                        help="where models run: cpu (default), cuda or cuda:N (the golden batch is replayed there "
                             "before a version is served)")
    parser.add_argument("--golden-atol", type=float,
                        help="tolerance of the load-time golden check, overriding the bundles' (for devices whose "
                             "kernels round differently from the CPU that wrote the golden outputs)")
    parser.add_argument("--keep-versions", type=int, default=0, help="versions kept per model (0: all)")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="repository rescan interval")
    parser.add_argument("--drain-seconds", type=float, default=20.0, help="grace for in-flight requests at shutdown")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key: serve TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.bundle and not args.repository:
        parser.error("give at least one --bundle or a --repository")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.instances < 1:
        parser.error(f"--instances {args.instances}: give at least 1 model thread per model version")
    if args.golden_atol is not None and not args.golden_atol >= 0:
        parser.error(f"--golden-atol {args.golden_atol}: give a tolerance of 0 or more")
    if args.torch_threads is not None and args.torch_threads < 1:
        parser.error(f"--torch-threads {args.torch_threads}: give at least 1 thread, or leave it out for the default")
    torch_threads = args.torch_threads or default_torch_threads(args.instances)
    torch.set_num_threads(torch_threads)
    try:
        server = start(bundles_to_load=args.bundle, repository_dir=args.repository, host=args.host, port=args.port,
                       metrics_port=None if args.metrics_port < 0 else args.metrics_port, workers=args.workers,
                       max_message_bytes=args.max_message_bytes, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       keep_versions=args.keep_versions, max_queue_delay_us=args.max_queue_delay_us,
                       max_batch_size=args.max_batch_size, instances=args.instances, device=args.device,
                       golden_atol=args.golden_atol)
    except (bundles.BundleError, OSError, ValueError) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    models = ", ".join(f"{n} (versions {', '.join(server.repository.versions(n))})" for n in server.repository.names())
    print(f"serving {models} on {args.host}:{server.port} (gRPC, Open Inference Protocol"
          f"{', TLS' if args.tls_cert else ''}); metrics on http://{args.host}:{server.metrics_port}/metrics; "
          f"{args.instances} instance(s) per model x {torch_threads} torch thread(s) on {server.repository.device}",
          file=sys.stderr, flush=True)

    stop = threading.Event()
    rescan = threading.Event()
    def on_stop(*_):
        stop.set()
        rescan.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: rescan.set())
    while not stop.is_set():
        rescan.wait(args.poll_seconds)
        if stop.is_set():
            break
        rescan.clear()
        if args.repository:
            server.repository.scan(args.repository)
    print(f"draining: refusing new requests, finishing in-flight ones (up to {args.drain_seconds:.0f} s)",
          file=sys.stderr, flush=True)
    server.stop(args.drain_seconds)
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
