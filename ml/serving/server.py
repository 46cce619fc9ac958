"""mlenv's model server: Open Inference Protocol (KServe v2) over gRPC, serving verified model bundles.

    tools/bazel run //ml/homefeed:serve                        # the homefeed bundle on 127.0.0.1:8001
    python -m ml.serving.server --repository DIR --port 8001 --metrics-port 8002

- Several models and versions at once: `--bundle PATH` (repeatable) and/or `--repository DIR` holding
  `<model>/<version>/bundle.json`; a request without a version gets the newest (numeric versions compare
  as numbers).
- Hot reload: the repository is rescanned every `--poll-seconds` (and on SIGHUP). A new version is verified,
  loaded and checked against its golden batch BEFORE it becomes visible; requests already running keep the
  model object they started with, so none fails. `--keep-versions N` retires older versions.
- Dynamic batching per model version: requests are queued and run together up to the bundle's
  max_batch_size rows, waiting at most max_queue_delay_us for company.
- Bad input never takes the server down: unknown model/version -> NOT_FOUND; wrong tensor names, dtypes,
  shapes or byte sizes -> INVALID_ARGUMENT with a message naming the tensor; oversize messages ->
  RESOURCE_EXHAUSTED (gRPC's own limit, --max-message-bytes). A tampered bundle is refused at load.
- Prometheus metrics on --metrics-port (requests, latency histogram, batch sizes, errors, queue depth).
- SIGTERM/SIGINT: readiness goes false, new requests are refused, in-flight ones finish (--drain-seconds),
  then the process exits 0.
- Binds 127.0.0.1 unless --host says otherwise; TLS with --tls-cert/--tls-key.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
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


@dataclass
class _Pending:
    inputs: list[np.ndarray]
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: BaseException | None = None


class DynamicBatcher:
    """Collects requests for one model version and runs them as one batch."""

    def __init__(self, name: str, model, max_batch_size: int, max_delay_s: float, metrics: Metrics) -> None:
        self.name, self.model, self.max_rows, self.max_delay = name, model, max_batch_size, max_delay_s
        self.metrics = metrics
        self._queue: list[_Pending] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, inputs: list[np.ndarray], rows: int, timeout: float | None) -> list[np.ndarray]:
        item = _Pending(inputs, rows)
        with self._cv:
            if self._closed:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name} is unloading; retry")
            self._queue.append(item)
            self.metrics.queue.labels(self.name).set(len(self._queue))
            self._cv.notify()
        if not item.done.wait(timeout):
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for the model")
        if item.error is not None:
            raise item.error
        return item.outputs

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def _take_batch(self) -> list[_Pending]:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if not self._queue:
                return []
            deadline = time.monotonic() + self.max_delay
            while sum(p.rows for p in self._queue) < self.max_rows and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, rows = [], 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self.max_rows):
                item = self._queue.pop(0)
                batch.append(item)
                rows += item.rows
            self.metrics.queue.labels(self.name).set(len(self._queue))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                joined = [np.concatenate([p.inputs[i] for p in batch]) if len(batch) > 1 else batch[0].inputs[i]
                          for i in range(len(batch[0].inputs))]
                with torch.inference_mode():
                    out = self.model(*(torch.from_numpy(a) for a in joined))
                out = out if isinstance(out, (tuple, list)) else (out,)
                arrays = [t.detach().cpu().numpy() for t in out]
                self.metrics.batch.labels(self.name).observe(sum(p.rows for p in batch))
                start = 0
                for item in batch:
                    item.outputs = [a[start:start + item.rows] for a in arrays]
                    start += item.rows
            except Exception as exc:  # noqa: BLE001 - a failing batch fails its requests, never the server
                for item in batch:
                    item.error = RequestError(grpc.StatusCode.INTERNAL, f"model {self.name} failed: {exc}")
            for item in batch:
                item.done.set()


@dataclass
class LoadedModel:
    bundle: bundles.Bundle
    module: Any
    batcher: DynamicBatcher

    @property
    def inputs(self) -> list[dict]:
        return self.bundle.signature["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.bundle.signature["outputs"]


def _version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


class ModelRepository:
    """Loaded models by name and version; loading verifies hashes and replays the golden batch first."""

    def __init__(self, metrics: Metrics, *, keep_versions: int = 0, max_delay_override_us: int | None = None,
                 max_batch_override: int | None = None) -> None:
        self.metrics = metrics
        self.keep_versions = keep_versions
        self.max_delay_override_us, self.max_batch_override = max_delay_override_us, max_batch_override
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._lock = threading.Lock()
        self.failed: dict[str, str] = {}  # bundle path -> why it was refused

    def load(self, path: Path) -> LoadedModel:
        b = bundles.verify(path)
        module = bundles.load_model(b)
        bundles.check_golden(b, module)
        serving = b.manifest.get("serving", {})
        max_rows = self.max_batch_override or int(serving.get("max_batch_size", 256))
        delay_us = self.max_delay_override_us if self.max_delay_override_us is not None else int(serving.get("max_queue_delay_us", 2000))
        loaded = LoadedModel(b, module, DynamicBatcher(f"{b.name}/{b.version}", module, max_rows, delay_us / 1e6, self.metrics))
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


def _decode_inputs(request: pb.ModelInferRequest, model: LoadedModel, max_rows: int) -> tuple[list[np.ndarray], int]:
    expected = {t["name"]: t for t in model.inputs}
    given = [t.name for t in request.inputs]
    missing = [n for n in expected if n not in given]
    unknown = [n for n in given if n not in expected]
    if missing or unknown or len(set(given)) != len(given):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"model {model.bundle.name} takes inputs {list(expected)}; missing {missing}, unknown "
                           f"{unknown}" + (", duplicated names" if len(set(given)) != len(given) else ""))
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input")
    arrays: dict[str, np.ndarray] = {}
    rows = None
    for i, tensor in enumerate(request.inputs):
        spec = expected[tensor.name]
        want_type = TORCH_TO_OIP.get(spec["dtype"], spec["dtype"].upper())
        if tensor.datatype != want_type:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {tensor.name}: datatype {tensor.datatype}, the model expects {want_type}")
        shape = list(tensor.shape)
        want_shape = spec["shape"]
        if len(shape) != len(want_shape) or any(w != -1 and s != w for s, w in zip(shape, want_shape)) or \
                any(s < 0 for s in shape):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {tensor.name}: shape {shape}, the model expects {want_shape} (-1 = any)")
        dtype = DTYPES[want_type]
        count = int(np.prod(shape))
        if raw:
            if len(raw[i]) != count * dtype.itemsize:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {tensor.name}: {len(raw[i])} bytes of raw contents, shape {shape} of "
                                   f"{want_type} needs {count * dtype.itemsize}")
            array = np.frombuffer(raw[i], dtype=dtype.newbyteorder("<")).astype(dtype, copy=True).reshape(shape)
        else:
            values = getattr(tensor.contents, CONTENTS_FIELD.get(want_type, "bytes_contents"))
            if len(values) != count:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {tensor.name}: {len(values)} values in contents, shape {shape} needs {count}")
            array = np.asarray(values, dtype=dtype).reshape(shape)
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {tensor.name} has {shape[0]} rows, other inputs {rows}: one batch size per request")
        arrays[tensor.name] = array
    if rows == 0 or rows > max_rows:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch of {rows} rows; model {model.bundle.name} accepts 1..{max_rows} per request")
    return [arrays[t["name"]] for t in model.inputs], rows


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
            dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=int(model.batcher.max_delay * 1e6)))
        return pb.ModelConfigResponse(config=config)

    def ModelInfer(self, request, context):
        start = time.perf_counter()
        name, version, code = request.model_name, request.model_version or "", grpc.StatusCode.OK
        try:
            if self.draining.is_set():
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); retry elsewhere")
            model = self.repository.get(name, version)
            version = model.bundle.version
            inputs, rows = _decode_inputs(request, model, model.batcher.max_rows)
            wanted = [o.name for o in request.outputs] or [t["name"] for t in model.outputs]
            known = [t["name"] for t in model.outputs]
            unknown = [o for o in wanted if o not in known]
            if unknown:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown outputs {unknown}; model has {known}")
            remaining = context.time_remaining()  # huge (not None) when the client set no deadline
            outputs = model.batcher.submit(inputs, rows, min(remaining if remaining is not None else 300.0, 300.0))
            response = pb.ModelInferResponse(model_name=model.bundle.name, model_version=version, id=request.id)
            for spec, array in zip(model.outputs, outputs):
                if spec["name"] not in wanted:
                    continue
                array = np.ascontiguousarray(array)
                response.outputs.add(name=spec["name"], datatype=TORCH_TO_OIP[str(array.dtype)], shape=list(array.shape))
                response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
            return response
        except RequestError as exc:
            code = exc.code
            context.abort(exc.code, str(exc))
        finally:
            self.metrics.requests.labels(name, version or "latest", code.name).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)


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
          max_queue_delay_us: int | None = None, max_batch_size: int | None = None) -> InferenceServer:
    metrics = Metrics()
    repository = ModelRepository(metrics, keep_versions=keep_versions, max_delay_override_us=max_queue_delay_us,
                                 max_batch_override=max_batch_size)
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
    parser.add_argument("--max-queue-delay-us", type=int, help="override the bundles' max queue delay")
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
    try:
        server = start(bundles_to_load=args.bundle, repository_dir=args.repository, host=args.host, port=args.port,
                       metrics_port=None if args.metrics_port < 0 else args.metrics_port, workers=args.workers,
                       max_message_bytes=args.max_message_bytes, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       keep_versions=args.keep_versions, max_queue_delay_us=args.max_queue_delay_us,
                       max_batch_size=args.max_batch_size)
    except (bundles.BundleError, OSError) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    models = ", ".join(f"{n} (versions {', '.join(server.repository.versions(n))})" for n in server.repository.names())
    print(f"serving {models} on {args.host}:{server.port} (gRPC, Open Inference Protocol"
          f"{', TLS' if args.tls_cert else ''}); metrics on http://{args.host}:{server.metrics_port}/metrics",
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
