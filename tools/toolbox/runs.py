"""Finding the runs the toolbox shows: which MLflow store, whether it answers, which run a name means.

Kept apart from the command-line front ends so that `//tools:mlflow` (the UI and `--compare`) and its tests
share one reading of "the store": `--tracking-uri` > `MLFLOW_TRACKING_URI` > the embedded store that the
trainers write (`<workspace>/.mlenv/mlflow.db`, artifacts in `<workspace>/.mlenv/mlartifacts`), which is the
same precedence as ml/engine/tracking.py uses when it records a run.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.toolbox.serve import ToolboxError, workspace

__all__ = ["Store", "check_store", "find_run", "resolve_store"]

# A store that does not answer must cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

TRAIN_HINT = "train one first, e.g. `tools/bazel run //ml/homefeed:train`"


@dataclass(frozen=True)
class Store:
    uri: str
    source: str  # where the URI came from, for messages: "--tracking-uri", "MLFLOW_TRACKING_URI", "embedded"
    artifact_root: str | None = None  # for the embedded store: where its experiments keep artifacts

    @property
    def is_server(self) -> bool:
        return urllib.parse.urlparse(self.uri).scheme in ("http", "https")

    @property
    def sqlite_path(self) -> Path | None:
        if not self.uri.startswith("sqlite:///"):
            return None
        return Path(urllib.parse.unquote(self.uri[len("sqlite:///"):].split("?", 1)[0]) or "/")


def resolve_store(flag: str | None) -> Store:
    if flag:
        return Store(flag, "--tracking-uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return Store(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    state = workspace() / ".mlenv"
    return Store(f"sqlite:///{state / 'mlflow.db'}", "embedded", (state / "mlartifacts").as_uri())


def _client(store: Store) -> Any:
    import mlflow

    return mlflow.MlflowClient(store.uri)


def _unreachable(store: Store, reason: str) -> ToolboxError:
    fix = ("fix or unset it (unset: the embedded store in .mlenv/mlflow.db)" if store.source != "embedded"
           else "check the file")
    return ToolboxError(f"the tracking store {store.uri} (from {store.source}) does not answer: {reason}; "
                        f"start that server or {fix}")


def check_store(store: Store) -> Any:
    """Returns a client for a store that answers and holds at least one run; else a ToolboxError saying why."""
    path = store.sqlite_path
    if path is not None and not path.is_file():
        where = "the embedded store" if store.source == "embedded" else f"{store.source}"
        raise ToolboxError(f"no runs yet: {where} {path} does not exist; {TRAIN_HINT}"
                           + ("" if store.source == "embedded" else f", or point {store.source} at another store"))
    if store.is_server:
        try:
            with urllib.request.urlopen(store.uri.rstrip("/") + "/health", timeout=5):  # noqa: S310 - is_server: http(s) only
                pass
        except urllib.error.HTTPError as exc:
            raise _unreachable(store, f"/health answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise _unreachable(store, str(getattr(exc, "reason", exc))) from exc
    client = _client(store)
    try:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiment_ids, max_results=1) if experiment_ids else []
    except Exception as exc:  # noqa: BLE001 - any backend failure here means the store is unusable
        raise _unreachable(store, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not runs:
        raise ToolboxError(f"no runs yet in {store.uri} (from {store.source}); {TRAIN_HINT}")
    return client


def find_run(client: Any, key: str) -> Any:
    """A run by id, or by name (the newest run of that name wins only if the name is unique)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(key)
    except MlflowException:
        pass
    quote = '"' if "'" in key else "'"
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids, filter_string=f"attributes.run_name = {quote}{key}{quote}",
                              max_results=20, order_by=["attributes.start_time DESC"]) if experiment_ids else []
    if not runs:
        raise ToolboxError(f"no run with id or name {key!r} in {client.tracking_uri}; list runs in the UI "
                           f"(`tools/bazel run //tools:mlflow`) or pass a run id the trainer printed")
    if len(runs) > 1:
        ids = ", ".join(r.info.run_id for r in runs)
        raise ToolboxError(f"{len(runs)} runs are named {key!r} ({ids}); pass one of these run ids instead")
    return runs[0]
