"""The model repository of mlenv's model server: which model versions are served, loading them (verify,
load, golden replay) before they become visible, retiring old ones, and rescanning a folder for new ones.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from ml.serving import bundle as bundles
from ml.serving.batcher import DynamicBatcher
from ml.serving.metrics import Metrics
from ml.serving.protocol import RequestError, input_spec

__all__ = ["DEFAULT_KEEP_VERSIONS", "LoadedModel", "ModelRepository", "fingerprint", "version_key"]

log = logging.getLogger("mlenv.serving")


class LoadedModel:
    """A served model version: bundle, runtime model, batcher, and what every request needs precomputed.
    `module` is the runtime's own object (a torch module, ...), `runtime` the seam object around it."""

    def __init__(self, bundle: bundles.Bundle, runtime: Any, batcher: DynamicBatcher, metrics: Metrics) -> None:
        self.bundle, self.runtime, self.batcher = bundle, runtime, batcher
        self.module = runtime.module
        self.input_specs = tuple(input_spec(t) for t in self.inputs)
        self.input_names = [t.name for t in self.input_specs]
        self.input_index = {t.name: i for i, t in enumerate(self.input_specs)}
        self.output_names = [t["name"] for t in self.outputs]
        self.latency = metrics.latency.labels(bundle.name)
        self._requests = metrics.requests
        self._counters: dict[str, Any] = {}  # status code -> Counter child (a handful at most)
        self.retired = False  # set when retired: its metric series are gone and must not come back

    @property
    def inputs(self) -> list[dict]:
        return self.bundle.signature["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.bundle.signature["outputs"]

    def count(self, code: grpc.StatusCode) -> None:
        counter = self._counters.get(code.name)
        if counter is None:
            if self.retired:
                return  # a request that finished on a retired version: counting it would revive its series
            counter = self._counters[code.name] = self._requests.labels(self.bundle.name, self.bundle.version,
                                                                          code.name)
        counter.inc()


def version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


DEFAULT_KEEP_VERSIONS = 2  # the newest version and the one before it, to roll back to or drain from


def fingerprint(path: Path) -> tuple:
    """What a version folder looks like on disk: every file's path, inode, size and mtime. Any copy, rename or
    in-place rewrite changes it; an untouched folder keeps it, so a rescan can skip what it already judged."""
    entries = []
    for file in sorted(path.rglob("*")):
        st = file.lstat()
        entries.append((file.relative_to(path).as_posix(), st.st_ino, st.st_size, st.st_mtime_ns))
    return (path.stat().st_ino, tuple(entries))


class ModelRepository:
    """Loaded models by name and version; loading verifies hashes and replays the golden batch first.

    The repository folder's contract (scan()): publish a version by writing `<model>/<version>/` elsewhere on
    the same filesystem and renaming it into place, which is atomic. A folder caught half-copied anyway is
    refused and tried again once its files change (the copy goes on); a version folder rewritten in place is
    loaded again and replaces the version served from it. A folder that has not changed since it was last
    judged (loaded, refused or retired) is not loaded again.
    """

    def __init__(self, metrics: Metrics, *, keep_versions: int = DEFAULT_KEEP_VERSIONS,
                 max_delay_override_us: int | None = None, max_batch_override: int | None = None,
                 instances: int = 1, device: str = "cpu", golden_atol: float | None = None,
                 max_queued_rows: int | None = None, public_key: Any = None, threads: int | None = None,
                 artifact_format: str | None = None) -> None:
        if instances < 1:
            raise ValueError(f"instances must be at least 1 (model threads per version), got {instances}")
        if keep_versions < 0:
            raise ValueError(f"keep_versions must be 0 (keep all) or more, got {keep_versions}")
        self.device = bundles.resolve_device(device)
        self.threads = threads  # intra-op threads per instance, for the runtime (None: its default)
        self.artifact_format = artifact_format  # which artifact of each bundle to serve (None: its default)
        self.golden_atol = golden_atol
        self.metrics = metrics
        self.keep_versions = keep_versions
        self.instances = instances
        self.max_queued_rows = max_queued_rows
        # With a key, only bundles signed by it load (bundle.verify): integrity alone lets anyone who can write
        # the repository swap a model. Read once here, so a bad key file fails at start-up.
        self.public_key = bundles.load_public_key(public_key) if public_key is not None else None
        self.max_delay_override_us, self.max_batch_override = max_delay_override_us, max_batch_override
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._lock = threading.Lock()
        self.failed: dict[str, str] = {}  # bundle path -> why it was refused
        self._judged: dict[str, tuple] = {}  # bundle path -> its fingerprint when last loaded or refused
        self._retiring: list[threading.Thread] = []

    def load(self, path: Path) -> LoadedModel:
        b = bundles.verify(path, public_key=self.public_key)
        # The chosen artifact is replayed against the golden outputs here, whichever runtime runs it.
        module = bundles.load_model(b, self.device, threads=self.threads, fmt=self.artifact_format)
        bundles.check_golden(b, module, atol=self.golden_atol)
        serving = b.manifest.get("serving", {})
        max_rows = self.max_batch_override or int(serving.get("max_batch_size", 256))
        delay_us = self.max_delay_override_us if self.max_delay_override_us is not None else int(serving.get("max_queue_delay_us", 2000))
        batcher = DynamicBatcher(f"{b.name}/{b.version}", module, max_rows, delay_us / 1e6, self.metrics,
                                 self.instances, self.max_queued_rows)
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
        log.info("loaded %s version %s from %s (%s artifact)", b.name, b.version, path,
                 bundles.artifact_for(b, self.artifact_format)[0])
        return loaded

    def _retire(self, model: LoadedModel) -> None:
        """Stops serving `model` (already out of self._models); the caller holds self._lock."""
        # Requests that already hold `model` finish: the batcher drains its queue before it stops.
        closer = threading.Thread(target=model.batcher.close, name=f"retire-{model.batcher.name}", daemon=True)
        closer.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [closer]
        name, version = model.bundle.name, model.bundle.version
        if version in self._models.get(name, {}):
            return  # the same name/version was loaded again (another path, a rewrite): its series stay
        model.retired = True
        self.metrics.loaded.remove(name, version)
        for code in list(model._counters):
            self.metrics.requests.remove(name, version, code)
        for family in (self.metrics.queue, self.metrics.batch):
            with contextlib.suppress(KeyError):  # never observed
                family.remove(model.batcher.name)
        if not self._models.get(name):
            self._models.pop(name, None)
            with contextlib.suppress(KeyError):
                self.metrics.latency.remove(name)

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
        """Loads every <model>/<version>/bundle.json under root that is new or changed (see the class docstring
        for the folder contract)."""
        for manifest in sorted(root.glob("*/*/bundle.json")):
            path = manifest.parent
            key = str(path)
            try:
                seen = fingerprint(path)
            except OSError:
                continue  # renamed or removed while we looked: the next scan sees what is there then
            if self._judged.get(key) == seen:
                continue  # unchanged since it was loaded, refused or retired
            self._judged[key] = seen
            try:
                self.load(path)
                self.failed.pop(key, None)
            except Exception as exc:  # noqa: BLE001 - a bad bundle is refused; the server keeps serving
                self.failed[key] = str(exc)
                log.error("refused %s: %s", path, exc)

    def close(self, timeout: float = 30.0) -> None:
        """Stops every model's instances, retired ones included; waits up to `timeout` seconds in all."""
        with self._lock:
            models = [m for v in self._models.values() for m in v.values()]
            retiring = list(self._retiring)
        deadline = time.monotonic() + timeout
        for model in models:
            model.batcher.close(max(0.0, deadline - time.monotonic()))
        for thread in retiring:
            thread.join(max(0.0, deadline - time.monotonic()))
