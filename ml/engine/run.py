"""The run object: what any training loop (hand-written or the engine's `Task` loop, PyTorch or TensorFlow)
opens to get the platform. Framework-neutral: this module imports neither torch nor TensorFlow.

    from ml.engine import run

    with run.start(config, project="homefeed") as r:
        ckpt = r.resume_from                       # the checkpoint to continue from under --resume, or None
        for step in range(first, total):
            ...                                    # your loop, your framework
            if r.is_primary:
                r.log({"train/loss": loss}, step)  # MLflow (queued) + tracking.jsonl + TensorBoard + progress
            if step % every == 0 or r.should_stop:
                with r.checkpoint_writer(step, {"epoch": e}) as folder:
                    save_your_state_into(folder)   # atomically committed on exit
            if r.should_stop:                      # SIGTERM/SIGINT: checkpoint, then leave; a relaunch resumes
                break

What it gives:
- the run folder (`r.dir`, pinned from config.run_dir / run_name, identical on every rank and on resume),
  `config.json`, rank awareness from the launcher's environment (RANK / WORLD_SIZE / LOCAL_RANK, which
  torchrun, `--nproc` and Ray Train's torch backend set): only the primary rank writes run files or logs;
- tracking: MLflow through tracking.Tracker (never stalls, never loses metrics: local log + replay),
  TensorBoard scalars, a progress bar; `r.log` on a non-zero rank is an error naming the fix;
- `r.should_stop`: set by SIGTERM (a scheduler's preemption) or SIGINT; the loop checkpoints and returns;
- checkpoint folder management (checkpoint.CheckpointStore): staging folder, fsync, atomic rename, `latest`,
  keep-last-N, and the config digest check on restore (another config or strategy is refused with the fix);
- `r.export_dir` and `r.register_export(folder)` (logged to MLflow, recorded in result.json);
- `r.write_result(...)`: metrics.json (deterministic) and result.json (with the MLflow run).

Adapters (ml/engine/torch, ml/engine/tf) add the framework parts and call `r.set_barrier(...)` so that
checkpoint writing is coordinated across ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ml.engine import toolbox
from ml.engine.checkpoint import Checkpoint, CheckpointStore, config_digest
from ml.engine.config import config_to_dict, save_config
from ml.engine.errors import EngineError
from ml.engine.progress import ProgressReporter
from ml.engine.redact import redact
from ml.engine.tracking import Tracker, TrackingTarget, default_tracking_target, workspace_dir

__all__ = ["RESUME_IGNORES", "Run", "git_commit", "lock_digest", "pin_identity", "start"]

# Keys that may change between an interrupted run and its resume without changing the result.
RESUME_IGNORES = ("resume", "run_name", "run_dir", "experiment", "log_every", "profile", "profile_steps",
                  "num_workers", "export", "export_format", "export_onnx",
                  "checkpoint_every", "keep_checkpoints", "max_steps")


def git_commit(folder: Path) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def lock_digest() -> str:
    """The digest of the locked environment this process runs on (from @pypi's runfiles), or 'unknown'."""
    roots = [Path(os.environ["RUNFILES_DIR"])] if os.environ.get("RUNFILES_DIR") else []
    roots += [Path(sys.argv[0] + ".runfiles"), Path.cwd().parent]
    for root in roots:
        # @pypi is `pypi` under WORKSPACE, `<prefix>~pypi` (or `+pypi`) under Bzlmod.
        for path in [root / "pypi", *root.glob("*~pypi"), *root.glob("*+pypi")]:
            if (path / "lock_digest.txt").is_file():
                return (path / "lock_digest.txt").read_text().strip()
    return "unknown"


def pin_identity(config: Any, project: str) -> Any:
    """Fixes run_name and run_dir (absolute) so every rank and a resume agree on them."""
    run_name = config.run_name or f"{project}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = config.run_dir or str(workspace_dir() / ".mlenv" / "runs" / project / run_name)
    return dataclasses.replace(config, run_name=run_name, run_dir=str(Path(run_dir).absolute()))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise EngineError(f"{name}={raw!r} in the environment is not an integer; fix the launcher's "
                          f"environment (torchrun / Ray Train set it)") from None


def _ray_train_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from Ray Train's context when this process is a Ray Train worker that
    did not export the torchrun variables; None otherwise. Never imports ray itself."""
    ray_train = sys.modules.get("ray.train")
    if ray_train is None:
        return None
    try:
        ctx = ray_train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return None


class Run:
    """One training run seen from one rank. Create it with `start()`."""

    def __init__(self, config: Any, *, project: str, client: Any = None, resume_ignores: tuple[str, ...] = (),
                 tags: dict[str, str] | None = None, rank: int | None = None, world_size: int | None = None) -> None:
        if config.run_name is None or config.run_dir is None:
            config = pin_identity(config, project)
        self.config = config
        self.project = project
        self.dir = Path(config.run_dir)
        ray_ranks = _ray_train_ranks() if "RANK" not in os.environ else None
        if ray_ranks is not None:
            self.rank, self.world_size, self.local_rank = ray_ranks
        else:
            self.rank = _env_int("RANK", 0)
            self.world_size = _env_int("WORLD_SIZE", 1)
            self.local_rank = _env_int("LOCAL_RANK", self.rank)
        self.rank = self.rank if rank is None else rank
        self.world_size = self.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise EngineError(f"rank {self.rank} is outside world size {self.world_size}; fix RANK/WORLD_SIZE")
        self.config_dict = config_to_dict(config)
        ignore = RESUME_IGNORES + tuple(resume_ignores) + tuple(getattr(config, "resume_ignores", ()))
        kept = {k: v for k, v in self.config_dict.items() if k not in ignore}
        self.digest = config_digest(kept)
        self.store = CheckpointStore(self.dir / "checkpoints", keep=getattr(config, "keep_checkpoints", 3),
                                     is_primary=self.is_primary, digest=self.digest, config=kept)
        self.target: TrackingTarget = default_tracking_target() if self.is_primary else TrackingTarget("", None, False)
        self._client = client
        self._tags = dict(tags or {})
        self.tracker: Tracker | None = None
        self._writer = None
        self._progress: ProgressReporter | None = None
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self.resume_from: Checkpoint | None = None
        self.exports: list[Path] = []
        self.status = "FAILED"

    # -- identity ----------------------------------------------------------------------------------------
    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker else None

    @property
    def tensorboard_dir(self) -> Path:
        return self.dir / "tensorboard"

    @property
    def export_dir(self) -> Path:
        return self.dir / "export"

    def set_barrier(self, barrier: Callable[[], None]) -> None:
        """The adapter's cross-rank barrier (used around checkpoint writes)."""
        self.store.barrier = barrier

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        self._install_signal_handlers()
        if getattr(self.config, "resume", False):
            self.resume_from = self.store.latest()
            if self.resume_from is None and self.is_primary:
                print(f"mlenv: --resume: no checkpoint in {self.store.folder} yet; starting from step 0",
                      file=sys.stderr)
        if not self.is_primary:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.dir / "config.json")
        client = self._client
        if client is None:
            import mlflow

            client = mlflow.MlflowClient(self.target.tracking_uri)
        self.tracker = Tracker(client, self.dir, experiment=getattr(self.config, "experiment", None) or self.project,
                               run_name=self.config.run_name, artifact_root=self.target.artifact_root)
        tags = {"mlenv.project": self.project, "mlenv.git_commit": git_commit(workspace_dir()),
                "mlenv.lock_digest": lock_digest(), "mlenv.world_size": str(self.world_size), **self._tags}
        resume_id = self.resume_from.meta.get("run_id") if self.resume_from else None
        self.tracker.start(self.config_dict, tags, resume_run_id=resume_id)
        self.tracker.log_artifact(self.dir / "config.json")
        from ml.engine.tensorboard import ScalarWriter

        self._writer = ScalarWriter(self.tensorboard_dir)

    def _close(self, status: str) -> None:
        self.status = status
        try:
            if self._progress is not None:
                self._progress.close()
            if self._writer is not None:
                self._writer.close()
            if self.tracker is not None:
                self.tracker.finish(status)
        finally:
            self._restore_signal_handlers()

    # -- signals -----------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # e.g. a Ray Train worker thread: the launcher forwards signals instead
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        self._stop_signal = signum
        print(f"mlenv: rank {self.rank} got {signal.Signals(signum).name}: checkpointing, then stopping "
              f"(relaunch with --resume to continue)", file=sys.stderr, flush=True)

    @property
    def should_stop(self) -> bool:
        """True once SIGTERM or SIGINT arrived: write a checkpoint and leave the loop."""
        return self._stop_signal is not None

    @property
    def stop_signal(self) -> int | None:
        return self._stop_signal

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Marks the run as stopping (an adapter uses it when another rank saw the signal)."""
        self._stop_signal = self._stop_signal or signum

    # -- tracking ----------------------------------------------------------------------------------------
    def _require_primary(self, what: str) -> None:
        if not self.is_primary:
            raise EngineError(
                f"{what} called on rank {self.rank} of {self.world_size}: only rank 0 writes the run's logs. "
                f"Guard the call with `if r.is_primary:` (all-reduce the value first if every rank's part matters)")

    def set_total_steps(self, total: int, start_step: int = 0) -> None:
        """Enables the progress bar (primary only; a no-op elsewhere)."""
        if self.is_primary:
            self._progress = ProgressReporter(total, start_step=start_step,
                                              log_every=getattr(self.config, "log_every", 20))

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Logs scalars at `step`: MLflow (queued), tracking.jsonl, TensorBoard, and the progress line."""
        self._require_primary("log()")
        clean = {k: float(v) for k, v in metrics.items()}
        self.tracker.log_metrics(clean, step)
        for key, value in clean.items():
            self._writer.add_scalar(key, value, step)
        if self._progress is not None and "train/loss" in clean:
            self._progress.update(step, clean["train/loss"], clean.get("train/samples_per_s", 0.0))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._require_primary("log_artifact()")
        self.tracker.log_artifact(Path(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.is_primary and self.tracker is not None:
            self.tracker.set_tags({k: str(v) for k, v in tags.items()})

    def register_export(self, folder: Path) -> None:
        """Records an exported model folder: logged to MLflow under `export/`, listed in result.json."""
        self._require_primary("register_export()")
        self.exports.append(Path(folder))
        self.tracker.log_artifact(Path(folder), "export")

    # -- checkpoints -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def checkpoint_writer(self, step: int, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yields a staging folder for checkpoint `step` (call on EVERY rank); committed atomically on exit."""
        full = {"run_id": self.run_id, "world_size": self.world_size, **(meta or {})}
        with self.store.writer(step, full) as staging:
            yield staging

    def latest_checkpoint(self) -> Checkpoint | None:
        return self.store.latest()

    # -- console and results -----------------------------------------------------------------------------
    def _toolbox_lines(self, profile_dir: Path | None = None) -> list[str]:
        """The MLflow and TensorBoard commands that open this run (and where profiler traces went)."""
        return toolbox.closing_lines(tracking_uri=redact(self.target.tracking_uri), run_id=self.run_id,
                                     embedded=self.target.embedded, tensorboard_dir=self.tensorboard_dir,
                                     profile_dir=profile_dir)

    def print_banner(self, headline: str) -> None:
        if not self.is_primary:
            return
        lines = [f"mlenv: {headline}", f"  run dir:     {self.dir}", *self._toolbox_lines()]
        if self.resume_from is not None:
            lines.append(f"  resumed from {self.resume_from.path} at step {self.resume_from.step}")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def print_summary(self, headline: str) -> None:
        if not self.is_primary:
            return
        lines = [f"mlenv: {headline}", f"  run dir:     {self.dir}", *self._toolbox_lines(self.dir / "profile")]
        lines += [f"  exported:    {folder}" for folder in self.exports]
        print("\n".join(lines), file=sys.stderr, flush=True)

    def write_result(self, *, global_step: int, final_loss: float, eval_metrics: dict[str, float]) -> None:
        """metrics.json: what the run computed, nothing about where it ran (a build-time trained model copies
        it, so retraining to the same weights gives the same bytes); result.json adds the run."""
        self._require_primary("write_result()")
        outcome = {"global_step": global_step, "final_loss": final_loss, "eval_metrics": eval_metrics}
        (self.dir / "metrics.json").write_text(json.dumps(outcome, indent=2, sort_keys=True) + "\n")
        (self.dir / "result.json").write_text(json.dumps({
            "run_id": self.run_id, "tracking_uri": redact(self.target.tracking_uri), **outcome}, indent=2,
            sort_keys=True) + "\n")
        self.tracker.set_tags({"mlenv.final_step": str(global_step)})


@contextlib.contextmanager
def start(config: Any, *, project: str, client: Any = None, resume_ignores: tuple[str, ...] = (),
          tags: dict[str, str] | None = None) -> Iterator[Run]:
    """Opens a run for this process (one rank of the group the environment describes).

    The MLflow run ends FINISHED when the block completes, KILLED when it was left after a stop signal,
    FAILED on an exception.
    """
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    r = Run(config, project=project, client=client, resume_ignores=resume_ignores, tags=tags)
    status = "FAILED"
    try:
        r._open()
        yield r
        status = "KILLED" if r.should_stop else "FINISHED"
    finally:
        r._close(status)
