"""The commands a trainer prints at its end to look at the run: MLflow UI, TensorBoard, profiler traces.

A printed command must work on a fresh machine. `mlflow` and `tensorboard` exist only inside the locked
environment, so the lines name the toolbox's Bazel targets (`//tools:mlflow`, `//tools:tensorboard`), which
start those servers from the lock, with this run's paths filled in. Framework-neutral (no torch, no
tensorflow), so every adapter's trainer prints the same lines.
"""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ["closing_lines", "mlflow_command", "profile_line", "tensorboard_command"]

BAZEL = "tools/bazel"


def mlflow_command(tracking_uri: str, run_id: str | None, *, embedded: bool) -> str | None:
    """The command that opens this run in the MLflow UI, or None when nothing reached MLflow.

    The embedded store is the toolbox's default (same workspace), so only another store is named.
    """
    if not run_id:
        return None
    store = [] if embedded else ["--tracking-uri", tracking_uri]
    return shlex.join([BAZEL, "run", "//tools:mlflow", "--", *store, "--run", run_id])


def tensorboard_command(logdir: Path) -> str:
    return shlex.join([BAZEL, "run", "//tools:tensorboard", "--", "--logdir", str(logdir)])


def profile_line(profile_dir: Path) -> str | None:
    """Where `--profile` put its traces and how to open them, if it wrote any."""
    traces = sorted(profile_dir.glob("*.pt.trace.json*")) if profile_dir.is_dir() else []
    if not traces:
        return None
    return f"{traces[-1]}  (Chrome trace: open in Perfetto or chrome://tracing, docs/toolbox.md)"


def closing_lines(*, tracking_uri: str, run_id: str | None, embedded: bool, tensorboard_dir: Path,
                  profile_dir: Path | None = None) -> list[str]:
    """`  label: value` lines for a trainer's start/end summary (the run dir and export lines are the caller's)."""
    command = mlflow_command(tracking_uri, run_id, embedded=embedded)
    lines = [f"  mlflow:      {command}" if command else
             f"  mlflow:      {tracking_uri} (offline: no MLflow run; <run dir>/tracking.jsonl keeps everything)"]
    lines.append(f"  tensorboard: {tensorboard_command(tensorboard_dir)}")
    trace = profile_line(profile_dir) if profile_dir is not None else None
    if trace:
        lines.append(f"  profile:     {trace}")
    return lines
