"""The training loop every project uses. A project supplies a `Task` (its model, data, loss and evaluation,
in native PyTorch); the engine owns the plumbing around it:

config and flags, seeding, DDP (1..N processes), mixed precision, atomic checkpoints and exact resume,
MLflow tracking with a local fallback, TensorBoard, a progress bar, profiling, evaluation, and export.

    def main(argv=None):
        return run(MyConfig, MyTask(), argv, prog="bazel run //ml/myproject:train --")

Only rank 0 logs, checkpoints and exports; every rank runs the same number of steps.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from ml.engine import checkpoint as ckpt
from ml.engine import distributed, toolbox
from ml.engine.config import TrainerConfig, config_to_dict, parse_config, save_config
from ml.engine.errors import ConfigError, EngineError
from ml.engine.export import ExportResult, export_model
from ml.engine.precision import Precision
from ml.engine.progress import ProgressReporter
from ml.engine.tensorboard import ScalarWriter
from ml.engine.tracking import Tracker, default_tracking_target, workspace_dir

__all__ = ["RunResult", "Task", "run", "train"]

# Keys that may change between an interrupted run and its resume without changing the result.
_RESUME_IGNORES = ("resume", "run_name", "run_dir", "experiment", "log_every", "profile", "profile_steps",
                   "num_workers", "export", "export_format", "checkpoint_every", "keep_checkpoints", "max_steps")


class Task(Protocol):
    """What a project gives the engine. Model code stays native PyTorch; the task only wires it."""

    name: str

    def prepare(self, config: Any, is_main: bool) -> None:
        """Make data ready (e.g. generate shards). Called on every rank; rank 0 first, then the rest."""

    def build_model(self, config: Any) -> torch.nn.Module: ...

    def steps_per_epoch(self, config: Any, world_size: int) -> int:
        """Identical on every rank, so DDP ranks never wait on each other at an epoch's end."""

    def train_batches(self, config: Any, *, epoch: int, rank: int, world_size: int,
                      skip_batches: int) -> Iterable[Any]: ...

    def compute_loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float], int]:
        """Returns (loss, named loss parts, number of samples in the batch)."""

    def evaluate(self, model: torch.nn.Module, config: Any, device: torch.device) -> dict[str, float]: ...

    def example_inputs(self, config: Any) -> tuple[tuple[torch.Tensor, ...], list[str], list[str]]:
        """(inputs, input names, output names) of the served forward, for export and its golden batch."""


@dataclass
class RunResult:
    run_dir: Path
    run_id: str | None
    tracking_uri: str
    global_step: int
    final_loss: float
    eval_metrics: dict[str, float]
    export: ExportResult | None
    tensorboard_dir: Path
    checkpoint: Path | None


def _git_commit(folder: Path) -> str:
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
    candidates = []
    if os.environ.get("RUNFILES_DIR"):
        candidates.append(Path(os.environ["RUNFILES_DIR"]) / "pypi" / "lock_digest.txt")
    candidates.append(Path(sys.argv[0] + ".runfiles") / "pypi" / "lock_digest.txt")
    candidates.append(Path.cwd().parent / "pypi" / "lock_digest.txt")
    for path in candidates:
        if path.is_file():
            return path.read_text().strip()
    return "unknown"


def _default_run_dir(task_name: str, run_name: str) -> Path:
    return workspace_dir() / ".mlenv" / "runs" / task_name / run_name


def _pin_run_identity(config: TrainerConfig, task_name: str, argv: list[str]) -> tuple[TrainerConfig, list[str]]:
    """Fix run name and folder before workers start, so every rank (and a resume) agrees on them."""
    run_name = config.run_name or f"{task_name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = config.run_dir or str(_default_run_dir(task_name, run_name))
    config = dataclasses.replace(config, run_name=run_name, run_dir=str(Path(run_dir).absolute()))
    return config, argv + ["--set", f"run_name={run_name}", "--set", f"run_dir={config.run_dir}"]


def _save_loss_curve(history: list[tuple[int, float]], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([s for s, _ in history], [l for _, l in history])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(config_cls: type, task: Task, argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Command-line entry: parse flags, launch workers if --nproc > 1, train. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_config(config_cls, argv, prog=prog, description=(task.__doc__ or "").strip() or None)
    except ConfigError as exc:
        print(f"{prog or 'train'}: error: {exc}", file=sys.stderr)
        return 2
    if not distributed.in_launched_worker():
        config, argv = _pin_run_identity(config, task.name, argv)
        code = distributed.launch(config.nproc, [sys.argv[0], *argv])
        if code is not None:
            return code
    try:
        train(config, task)
    except EngineError as exc:
        print(f"{prog or 'train'}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def train(config: TrainerConfig, task: Task, *, client: Any = None) -> RunResult:
    """Trains `task` under `config` in this process (one rank of the group, if the environment says so)."""
    config.validate()
    if config.run_name is None or config.run_dir is None:
        config, _ = _pin_run_identity(config, task.name, [])
    _environment_gate(config)
    ctx = distributed.init(config.device)
    if ctx.world_size != config.nproc and ctx.world_size > 1 and config.nproc > 1:
        raise ConfigError(f"nproc={config.nproc} but the launcher started {ctx.world_size} processes")
    try:
        return _train(config, task, ctx, client)
    finally:
        distributed.shutdown(ctx)


def _environment_gate(config: TrainerConfig) -> None:
    """Under the CUDA config (or --device cuda), refuse to start on a machine that cannot run the locked torch."""
    from toolchains.cuda import gate

    variant = gate.variant_of_environment()
    if config.device == "cpu" or (variant != "cuda" and config.device != "cuda"):
        return
    problems = gate.check(gate.probe(), require_gpus=1)
    if problems:
        raise EngineError("the environment gate failed (toolchains/cuda/gate.py):\n" +
                          "\n".join(f"  - {p}" for p in problems) +
                          "\n  To train on CPU anyway, pass --device cpu.")


def _train(config: TrainerConfig, task: Task, ctx: distributed.DistContext, client: Any) -> RunResult:
    run_dir = Path(config.run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    tensorboard_dir = run_dir / "tensorboard"
    precision = Precision.create(config.precision, ctx.device)

    torch.manual_seed(config.seed)
    import random

    import numpy as np

    random.seed(config.seed + ctx.rank)
    np.random.seed(config.seed + ctx.rank)
    if ctx.is_main:
        task.prepare(config, True)
    ctx.barrier()
    if not ctx.is_main:
        task.prepare(config, False)

    model = task.build_model(config).to(ctx.device)
    torch.manual_seed(config.seed + ctx.rank)  # per-rank dropout streams after an identical init
    trained = model
    if ctx.world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    config_dict = config_to_dict(config)
    config_hash = ckpt.config_digest(config_dict, ignore=_RESUME_IGNORES + tuple(getattr(config, "resume_ignores", ())))
    steps_per_epoch = task.steps_per_epoch(config, ctx.world_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"the training data gives 0 steps per epoch at batch_size={config.batch_size} x "
                          f"{ctx.world_size} processes; lower batch_size or add data")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    position = ckpt.DataPosition(epoch=0, batch_in_epoch=0, global_step=0)
    resumed_from, resume_run_id = None, None
    history: list[tuple[int, float]] = []
    if config.resume:
        latest = ckpt.latest_checkpoint(checkpoint_dir)
        if latest is None:
            if ctx.is_main:
                print(f"mlenv: --resume: no checkpoint in {checkpoint_dir} yet; starting from step 0", file=sys.stderr)
        else:
            state = ckpt.load_checkpoint(latest, config_hash=config_hash)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if precision.scaler is not None and state["scaler"]:
                precision.scaler.load_state_dict(state["scaler"])
            rng_states = state["extra"].get("rng_per_rank")
            ckpt.restore_rng(rng_states[ctx.rank] if rng_states else state["rng"])
            position = ckpt.DataPosition(**state["position"])
            resume_run_id = state["extra"].get("run_id")
            history = [tuple(x) for x in state["extra"].get("loss_history", [])]
            resumed_from = latest

    target = default_tracking_target()
    if client is None and ctx.is_main:
        import mlflow

        client = mlflow.MlflowClient(target.tracking_uri)
    tracker = Tracker(client, run_dir, experiment=config.experiment or task.name, run_name=config.run_name,
                      artifact_root=target.artifact_root, enabled=ctx.is_main)
    writer = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.json")
        tags = {"mlenv.project": task.name, "mlenv.git_commit": _git_commit(workspace_dir()),
                "mlenv.lock_digest": lock_digest(), "mlenv.world_size": str(ctx.world_size),
                "mlenv.device": str(ctx.device), "mlenv.torch": torch.__version__}
        run_id = tracker.start(config_dict, tags, resume_run_id=resume_run_id)
        tracker.log_artifact(run_dir / "config.json")
        writer = ScalarWriter(tensorboard_dir)
        print(f"mlenv: run {config.run_name} ({ctx.world_size} x {ctx.device}, {config.precision}, "
              f"{total_steps} steps)\n  run dir:     {run_dir}\n"
              + "\n".join(toolbox.closing_lines(tracking_uri=target.tracking_uri, run_id=run_id,
                                                embedded=target.embedded, tensorboard_dir=tensorboard_dir))
              + (f"\n  resumed from {resumed_from} at step {position.global_step}" if resumed_from else ""),
              file=sys.stderr, flush=True)

    profiler = None
    if config.profile and ctx.is_main:
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                                 if ctx.device.type == "cuda" else []),
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=config.profile_steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(run_dir / "profile")),
            record_shapes=True)
        profiler.start()

    progress = ProgressReporter(total_steps, start_step=position.global_step, enabled=ctx.is_main,
                                log_every=config.log_every)
    step = position.global_step
    epoch = position.epoch
    skip = position.batch_in_epoch
    last_loss = float("nan")
    eval_metrics: dict[str, float] = {}
    window_loss = torch.zeros((), device=ctx.device)
    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
    last_checkpoint: Path | None = None
    status = "FAILED"
    epoch_done, batch_in_epoch = False, skip

    def checkpoint_now(epoch_: int, batch_in_epoch: int) -> Path | None:
        rng = ckpt.capture_rng()
        rng_per_rank = [None] * ctx.world_size
        if ctx.world_size > 1:
            dist.all_gather_object(rng_per_rank, rng)
        else:
            rng_per_rank = [rng]
        path = None
        if ctx.is_main:
            path = ckpt.save_checkpoint(
                checkpoint_dir, position=ckpt.DataPosition(epoch_, batch_in_epoch, step), model=model,
                optimizer=optimizer, scaler=precision.scaler, config_hash=config_hash, keep=config.keep_checkpoints,
                extra={"run_id": tracker.run_id, "loss_history": [list(h) for h in history],
                       "rng_per_rank": rng_per_rank})
        ctx.barrier()
        return path

    try:
        trained.train()
        while epoch < config.epochs and step < total_steps:
            batch_in_epoch = skip
            batches = task.train_batches(config, epoch=epoch, rank=ctx.rank, world_size=ctx.world_size,
                                         skip_batches=skip)
            # Starting an iterator must not consume the global RNG (a DataLoader draws its base seed from
            # it): otherwise a resumed run, which starts its iterator at another point of the RNG stream,
            # would see different dropout masks than the uninterrupted run.
            with torch.random.fork_rng(devices=[]):
                batches = iter(batches)
            for batch in batches:
                if batch_in_epoch >= steps_per_epoch or step >= total_steps:
                    break
                with precision.autocast():
                    loss, parts, samples = task.compute_loss(trained, batch, ctx.device)
                precision.backward_and_step(loss, optimizer, model.parameters(), config.grad_clip)
                step += 1
                batch_in_epoch += 1
                window_loss += loss.detach().float()
                window_steps += 1
                window_samples += samples
                if profiler is not None:
                    profiler.step()
                if step % config.log_every == 0 or step == total_steps:
                    mean_loss = float(ctx.all_reduce_mean(window_loss / window_steps))
                    # Checked once per log window, not per step: a per-step check is a host sync every step.
                    if not math.isfinite(mean_loss):
                        raise EngineError(f"loss became {mean_loss} between steps {step - window_steps + 1} and "
                                          f"{step} (epoch {epoch}); lower --lr, use --precision fp32, or check "
                                          f"the inputs of those batches")
                    rate = window_samples * ctx.world_size / max(time.perf_counter() - window_start, 1e-9)
                    last_loss = mean_loss
                    history.append((step, mean_loss))
                    if ctx.is_main:
                        tracker.log_metrics({"train/loss": mean_loss, "train/samples_per_s": rate,
                                             **{f"train/{k}": v for k, v in parts.items()}}, step)
                        writer.add_scalar("train/loss", mean_loss, step)
                        writer.add_scalar("train/samples_per_s", rate, step)
                    progress.update(step, mean_loss, rate)
                    window_loss.zero_()
                    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
                if step % config.checkpoint_every == 0 and step < total_steps:
                    last_checkpoint = checkpoint_now(epoch, batch_in_epoch) or last_checkpoint
            epoch_done = batch_in_epoch >= steps_per_epoch
            if epoch_done:
                epoch += 1
                skip = 0
                if config.eval_every_epoch and ctx.is_main:
                    eval_metrics = _evaluate(task, model, config, ctx.device)
                    tracker.log_metrics({f"eval/{k}": v for k, v in eval_metrics.items()}, step)
                    for key, value in eval_metrics.items():
                        writer.add_scalar(f"eval/{key}", value, step)
                trained.train()
            else:
                break  # max_steps reached mid-epoch
        if not eval_metrics and ctx.is_main:
            eval_metrics = _evaluate(task, model, config, ctx.device)
            tracker.log_metrics({f"eval/{k}": v for k, v in eval_metrics.items()}, step)
        last_checkpoint = checkpoint_now(epoch, 0 if epoch_done else batch_in_epoch) or last_checkpoint
        export = None
        if ctx.is_main:
            if profiler is not None:
                profiler.stop()
                tracker.log_artifact(run_dir / "profile", "profile")
            curve = _save_loss_curve(history, run_dir / "loss_curve.png")
            if curve:
                tracker.log_artifact(curve)
            if (run_dir / "figures").is_dir():  # a task's evaluation figures (e.g. ml/engine/figures.py)
                tracker.log_artifact(run_dir / "figures", "figures")
            if last_checkpoint:
                tracker.log_artifact(last_checkpoint, "checkpoint")
            if config.export:
                inputs, input_names, output_names = task.example_inputs(config)
                export = export_model(model, inputs, input_names=input_names, output_names=output_names,
                                      folder=run_dir / "export", fmt=config.export_format)
                tracker.log_artifact(export.folder, "export")
            tracker.set_tags({"mlenv.final_step": str(step)})
            outcome = {"global_step": step, "final_loss": last_loss, "eval_metrics": eval_metrics}
            # metrics.json: what the run computed, nothing about where it ran (a build-time trained model
            # copies it, so retraining to the same weights gives the same bytes); result.json adds the run.
            (run_dir / "metrics.json").write_text(json.dumps(outcome, indent=2, sort_keys=True) + "\n")
            (run_dir / "result.json").write_text(json.dumps({
                "run_id": tracker.run_id, "tracking_uri": target.tracking_uri, **outcome}, indent=2, sort_keys=True) + "\n")
            print(f"mlenv: done at step {step}: loss {last_loss:.4f}"
                  + "".join(f", {k} {v:.4f}" for k, v in sorted(eval_metrics.items()))
                  + f"\n  run dir:     {run_dir}\n"
                  + "\n".join(toolbox.closing_lines(tracking_uri=target.tracking_uri, run_id=tracker.run_id,
                                                    embedded=target.embedded, tensorboard_dir=tensorboard_dir,
                                                    profile_dir=run_dir / "profile" if config.profile else None))
                  + (f"\n  exported:    {export.folder} ({export.artifact.name})" if export else ""),
                  file=sys.stderr, flush=True)
        status = "FINISHED"
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        tracker.finish(status)
    return RunResult(run_dir, tracker.run_id, target.tracking_uri, step, last_loss, eval_metrics, export,
                     tensorboard_dir, last_checkpoint)


def _evaluate(task: Task, model: torch.nn.Module, config: Any, device: torch.device) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, config, device)
    model.train()
    return {k: float(v) for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
