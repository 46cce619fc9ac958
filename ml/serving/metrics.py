"""The Prometheus metrics of mlenv's model server, in a registry of their own (one per server, so that
tests and benchmarks can run several servers in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["UNKNOWN_MODEL_LABEL", "Metrics"]

UNKNOWN_MODEL_LABEL = "_unknown"  # the metrics' model label for requests that named no loaded model


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
