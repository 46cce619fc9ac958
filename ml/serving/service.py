"""The gRPC side of mlenv's model server: the GRPCInferenceService servicer, and start() which loads the
models and binds the gRPC and metrics ports (used by the CLI, tests and benchmarks).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import start_http_server

from ml.serving.metrics import UNKNOWN_MODEL_LABEL, Metrics
from ml.serving.proto import inference_pb2 as pb
from ml.serving.proto import inference_pb2_grpc as pb_grpc
from ml.serving.protocol import RequestError, config_datatype, decode_inputs, encode_outputs, oip_datatype
from ml.serving.repository import DEFAULT_KEEP_VERSIONS, LoadedModel, ModelRepository

__all__ = ["InferenceServer", "Servicer", "start"]

SERVER_NAME = "mlenv"
SERVER_VERSION = "1"
DEFAULT_RPCS_PER_WORKER = 4  # RPCs admitted per gRPC worker thread before RESOURCE_EXHAUSTED


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
                                                           datatype=oip_datatype(t))

        fmt = model.bundle.manifest.get("artifact_format", "torchscript")
        # torch bundles name their archive format (pytorch_torchscript, pytorch_torch_export); others their runtime
        platform = "pytorch_" + fmt if fmt in ("torchscript", "torch_export") else model.runtime.platform
        return pb.ModelMetadataResponse(name=model.bundle.name, versions=self.repository.versions(model.bundle.name),
                                        platform=platform,
                                        inputs=[meta(t) for t in model.inputs], outputs=[meta(t) for t in model.outputs])

    def ModelConfig(self, request, context):
        model = self._model(request.name, request.version, context)

        def dims(t):
            return t["shape"][1:]

        try:
            return pb.ModelConfigResponse(config=self._config(model, dims))
        except RequestError as exc:
            context.abort(exc.code, str(exc))

    @staticmethod
    def _config(model: LoadedModel, dims) -> pb.ModelConfig:
        return pb.ModelConfig(
            name=model.bundle.name, platform=model.runtime.platform, backend="mlenv",
            max_batch_size=model.batcher.max_rows,
            input=[pb.ModelInput(name=t["name"], data_type=config_datatype(t), dims=dims(t))
                   for t in model.inputs],
            output=[pb.ModelOutput(name=t["name"], data_type=config_datatype(t), dims=dims(t))
                    for t in model.outputs],
            instance_group=[instance_group(model)],
            dynamic_batching=pb.ModelDynamicBatching(max_queue_delay_microseconds=int(model.batcher.max_delay * 1e6)))

    def ModelInfer(self, request, context):
        start = time.perf_counter()
        model, reserved, code = None, False, grpc.StatusCode.OK
        try:
            if self.draining.is_set():
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); retry elsewhere")
            model = self.repository.acquire(request.model_name, request.model_version)
            reserved = True
            inputs, rows = decode_inputs(request, model, model.batcher.max_rows)
            if request.outputs:
                unknown = [o.name for o in request.outputs if o.name not in model.output_names]
                if unknown:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"unknown outputs {unknown}; model has {model.output_names}")
            remaining = context.time_remaining()  # huge (not None) when the client set no deadline
            reserved = False  # submit() takes the reservation over, whatever happens in it
            outputs = model.batcher.submit(inputs, rows, min(remaining if remaining is not None else 300.0, 300.0),
                                           reserved=True)
            return encode_outputs(request, model, outputs)
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
          tls_cert: Path | None = None, tls_key: Path | None = None, keep_versions: int = DEFAULT_KEEP_VERSIONS,
          max_queue_delay_us: int | None = None, max_batch_size: int | None = None,
          instances: int = 1, device: str = "cpu", golden_atol: float | None = None,
          max_concurrent_rpcs: int | None = None, max_queued_rows: int | None = None,
          bundle_public_key: Path | None = None, threads: int | None = None) -> InferenceServer:
    """Loads the models and starts serving. `instances`: model threads per model version (see DynamicBatcher);
    `threads`: intra-op threads per instance, handed to each model's runtime (None: the runtime's default;
    torch's count is process-wide, so the last torch model loaded sets it for all).

    Overload is refused, never queued without end: past `max_concurrent_rpcs` RPCs in the server (running or
    waiting for a worker thread; default 4 x workers) gRPC answers RESOURCE_EXHAUSTED at once, and past
    `max_queued_rows` rows waiting for one model version (default: 8 full batches per instance) so does the
    batcher. Request memory is thus bounded by max_concurrent_rpcs x max_message_bytes."""
    if max_concurrent_rpcs is None:
        max_concurrent_rpcs = DEFAULT_RPCS_PER_WORKER * workers
    if max_concurrent_rpcs < 1:
        raise ValueError(f"max_concurrent_rpcs must be at least 1, got {max_concurrent_rpcs}")
    metrics = Metrics()
    repository = ModelRepository(metrics, keep_versions=keep_versions, max_delay_override_us=max_queue_delay_us,
                                 max_batch_override=max_batch_size, instances=instances, device=device,
                                 golden_atol=golden_atol, max_queued_rows=max_queued_rows,
                                 public_key=bundle_public_key, threads=threads)
    try:
        for path in bundles_to_load:
            repository.load(Path(path))  # a bad bundle given explicitly is fatal: say so before serving
        if repository_dir is not None:
            repository.scan(Path(repository_dir))
    except BaseException:
        repository.close(1.0)  # the versions loaded so far stop their threads
        raise
    servicer = Servicer(repository, metrics)
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         maximum_concurrent_rpcs=max_concurrent_rpcs)
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
