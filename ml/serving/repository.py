"""The model repository of mlenv's model server: which model versions are served, loading them (verify,
load, golden replay) before they become visible, retiring old ones, and rescanning a folder for new ones.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import grpc

from ml.serving import bundle as bundles
from ml.serving.batcher import DynamicBatcher
from ml.serving.metrics import Metrics
from ml.serving.protocol import RequestError, input_spec

__all__ = ["LoadedModel", "ModelRepository", "version_key"]

log = logging.getLogger("mlenv.serving")


class LoadedModel:
    """A served model version: bundle, model, batcher, and what every request needs precomputed."""

    def __init__(self, bundle: bundles.Bundle, module: Any, batcher: DynamicBatcher, metrics: Metrics) -> None:
        self.bundle, self.module, self.batcher = bundle, module, batcher
        self.input_specs = tuple(input_spec(t) for t in self.inputs)
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


def version_key(version: str) -> tuple:
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
                for v in sorted(versions, key=version_key)[:-self.keep_versions]:
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
            return versions[max(versions, key=version_key)]
        if version not in versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version!r}; loaded "
                                                          f"versions: {', '.join(sorted(versions, key=version_key))}")
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
            return sorted(self._models.get(name, {}), key=version_key)

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
