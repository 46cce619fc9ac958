"""Experiment tracking through an explicit MLflow client, that never stops a training run.

Where runs go:
- `MLFLOW_TRACKING_URI` set: that server or store (e.g. http://mlflow.internal:5000).
- otherwise an embedded store: `sqlite:///<workspace>/.mlenv/mlflow.db` with artifacts in
  `<workspace>/.mlenv/mlartifacts` (the workspace is $BUILD_WORKSPACE_DIRECTORY under `bazel run`).

Every call is queued and sent by a background thread, so a slow server never slows a step. Every record is
also appended to `<run_dir>/tracking.jsonl`. If the server is unreachable at start or dies mid-run, the
tracker says so once, keeps going, and at the end prints where the local log is and the command that
replays it into any MLflow store (`python -m ml.engine.tracking replay <run_dir>/tracking.jsonl`).
Nothing is lost.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.engine.redact import redact

__all__ = ["Tracker", "TrackingTarget", "default_tracking_target", "replay", "workspace_dir"]

# A dead server must cost seconds, not MLflow's default minutes of retries, before we fall back.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def workspace_dir() -> Path:
    """The user's workspace under `bazel run`, a test's temp dir under `bazel test`, else the cwd."""
    for var in ("BUILD_WORKSPACE_DIRECTORY", "TEST_TMPDIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path.cwd()


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str
    artifact_root: str | None  # for experiments the tracker creates in an embedded store
    embedded: bool


def default_tracking_target() -> TrackingTarget:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return TrackingTarget(uri, None, embedded=False)
    state = workspace_dir() / ".mlenv"
    state.mkdir(parents=True, exist_ok=True)
    return TrackingTarget(f"sqlite:///{state / 'mlflow.db'}", (state / "mlartifacts").as_uri(), embedded=True)


class Tracker:
    """Sends params, metrics, tags and artifacts to one MLflow run; falls back to a local log on failure.

    `client` is an explicit `mlflow.MlflowClient` (tests pass one bound to a local store or a dead URL).
    `enabled=False` (non-zero ranks) makes every method a no-op.
    """

    def __init__(self, client: Any, run_dir: Path, *, experiment: str, run_name: str,
                 artifact_root: str | None = None, enabled: bool = True,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> None:
        self.enabled = enabled
        self.client = client
        self.run_dir = run_dir
        self.local_log = run_dir / "tracking.jsonl"
        self.experiment, self.run_name, self.artifact_root = experiment, run_name, artifact_root
        self.run_id: str | None = None
        self.offline_reason: str | None = None
        self._log = log
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._file = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.local_log, "a", buffering=1)  # noqa: SIM115 - open for the run, closed by end()
        self._record({"kind": "start", "experiment": self.experiment, "run_name": self.run_name,
                      "params": {k: str(v) for k, v in params.items()}, "tags": tags})
        try:
            if resume_run_id:
                self.client.get_run(resume_run_id)
                self.run_id = resume_run_id
            else:
                experiment = self.client.get_experiment_by_name(self.experiment)
                experiment_id = (experiment.experiment_id if experiment else
                                 self.client.create_experiment(self.experiment, artifact_location=self.artifact_root))
                run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
                self.run_id = run.info.run_id
                self._send_params(params)
        except Exception as exc:  # noqa: BLE001 - any failure of the tracking backend means: go offline
            self._go_offline(exc)
        self._record({"kind": "run_id", "run_id": self.run_id})
        self._thread = threading.Thread(target=self._drain, name="mlflow-tracker", daemon=True)
        self._thread.start()
        return self.run_id

    def finish(self, status: str = "FINISHED", timeout: float = 60.0) -> None:
        if not self.enabled or self._thread is None:
            return
        self._queue.put(("terminate", status))
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._go_offline(TimeoutError(f"tracking server did not answer within {timeout:.0f} s at the end"))
        self._record({"kind": "end", "status": status})
        if self._file:
            self._file.close()
        if self.offline_reason:
            self._log(f"mlenv: tracking was offline ({self.offline_reason}); every param, metric and artifact of "
                      f"this run is in {self.local_log}.\n  Replay it into MLflow with: "
                      f"MLFLOW_TRACKING_URI=<uri> python -m ml.engine.tracking replay {self.local_log}")

    # -- logging (queued; never blocks the training step) ------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._record({"kind": "metrics", "metrics": clean, "step": step, "ts": int(time.time() * 1000)})
        self._queue.put(("metrics", (clean, step)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        self._record({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})
        self._queue.put(("artifact", (str(path), artifact_path)))

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        self._record({"kind": "tags", "tags": tags})
        self._queue.put(("tags", tags))

    def flush(self, timeout: float = 30.0) -> None:
        """Waits until everything queued so far was sent (or given up on)."""
        if not self.enabled or self._thread is None:
            return
        done = threading.Event()
        self._queue.put(("barrier", done))
        done.wait(timeout)

    # -- internals -------------------------------------------------------------------------------------
    def _record(self, entry: dict) -> None:
        if self._file:
            self._file.write(json.dumps(entry, sort_keys=True) + "\n")

    def _send_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _go_offline(self, exc: BaseException) -> None:
        if self.offline_reason is None:
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.offline_reason = redact(f"{type(exc).__name__}: {first}")[:240]  # MLflow quotes the server URL
            self._log(f"mlenv: MLflow tracking unavailable ({self.offline_reason}); training continues and "
                      f"everything is kept in {self.local_log}")

    def _drain(self) -> None:
        from mlflow.entities import Metric

        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, payload = item
            if kind == "barrier":
                payload.set()
                continue
            if self.offline_reason or self.run_id is None:
                continue  # already in the local log
            try:
                if kind == "metrics":
                    metrics, step = payload
                    ts = int(time.time() * 1000)
                    self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
                elif kind == "artifact":
                    path, artifact_path = payload
                    if Path(path).is_dir():
                        self.client.log_artifacts(self.run_id, path, artifact_path)
                    else:
                        self.client.log_artifact(self.run_id, path, artifact_path)
                elif kind == "tags":
                    for key, value in payload.items():
                        self.client.set_tag(self.run_id, key, value)
                elif kind == "terminate":
                    self.client.set_terminated(self.run_id, payload)
            except Exception as exc:  # noqa: BLE001 - see _go_offline
                self._go_offline(exc)


def replay(log_path: Path, client: Any) -> str:
    """Re-creates a run from a tracker's local log in the store `client` points at; returns the new run id."""
    from mlflow.entities import Metric, Param

    run_id = None
    for line in Path(log_path).read_text().splitlines():
        entry = json.loads(line)
        kind = entry["kind"]
        if kind == "start":
            experiment = client.get_experiment_by_name(entry["experiment"])
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(entry["experiment"])
            tags = dict(entry["tags"], **{"mlenv.replayed_from": str(log_path)})
            run_id = client.create_run(experiment_id, run_name=entry["run_name"], tags=tags).info.run_id
            params = [Param(k, v) for k, v in sorted(entry["params"].items())]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
        elif run_id is None:
            continue
        elif kind == "metrics":
            client.log_batch(run_id, metrics=[Metric(k, v, entry["ts"], entry["step"]) for k, v in entry["metrics"].items()])
        elif kind == "artifact" and Path(entry["path"]).exists():
            if Path(entry["path"]).is_dir():
                client.log_artifacts(run_id, entry["path"], entry["artifact_path"])
            else:
                client.log_artifact(run_id, entry["path"], entry["artifact_path"])
        elif kind == "tags":
            for key, value in entry["tags"].items():
                client.set_tag(run_id, key, value)
        elif kind == "end":
            client.set_terminated(run_id, entry["status"])
    if run_id is None:
        raise ValueError(f"{log_path} has no 'start' record: not a tracker log")
    return run_id


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "replay":
        print("usage: python -m ml.engine.tracking replay <run_dir>/tracking.jsonl  (target: $MLFLOW_TRACKING_URI)",
              file=sys.stderr)
        return 2
    import mlflow

    target = default_tracking_target()
    run_id = replay(Path(argv[1]), mlflow.MlflowClient(target.tracking_uri))
    print(f"replayed {argv[1]} into {redact(target.tracking_uri)} as run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
