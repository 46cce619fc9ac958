"""The training loop every project uses. A project supplies a `Task` (its model, data, loss and evaluation,
in native PyTorch); the engine owns the plumbing around it:

config and flags, seeding, DDP (1..N processes), mixed precision, atomic checkpoints and exact resume,
MLflow tracking with a local fallback, TensorBoard, a progress bar, profiling, evaluation, and export.

    def main(argv=None):
        return run(MyConfig, MyTask(), argv, prog="bazel run //ml/myproject:train --")

Only rank 0 logs, checkpoints and exports; every rank runs the same number of steps.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ml.engine import distributed
from ml.engine import run as engine_run
from ml.engine.config import TrainerConfig, parse_config
from ml.engine.errors import ConfigError, EngineError
from ml.engine.export import ExportResult
from ml.engine.run import lock_digest, pin_identity
from ml.engine.torch import TorchRun

__all__ = ["RunResult", "Task", "lock_digest", "run", "train"]


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
    stopped_by: int | None = None  # the signal that stopped the run early (after a checkpoint), if any


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


def _pin_run_identity(config: TrainerConfig, task_name: str, argv: list[str]) -> tuple[TrainerConfig, list[str]]:
    """Fix run name and folder before workers start, so every rank (and a resume) agrees on them."""
    config = pin_identity(config, task_name)
    return config, argv + ["--set", f"run_name={config.run_name}", "--set", f"run_dir={config.run_dir}"]


def run(config_cls: type, task: Task, argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Command-line entry: parse flags, launch workers if --nproc > 1, train. Returns the exit code
    (143 / 130 when SIGTERM / SIGINT stopped the run after a checkpoint: a relaunch with --resume continues)."""
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
        result = train(config, task)
    except EngineError as exc:
        print(f"{prog or 'train'}: error: {exc}", file=sys.stderr)
        return 1
    return 128 + result.stopped_by if result.stopped_by else 0


def train(config: TrainerConfig, task: Task, *, client: Any = None) -> RunResult:
    """Trains `task` under `config` in this process (one rank of the group, if the environment says so)."""
    config.validate()
    if config.run_name is None or config.run_dir is None:
        config, _ = _pin_run_identity(config, task.name, [])
    _environment_gate(config)
    if config.nproc > 1 and distributed.in_launched_worker():
        import os

        world = int(os.environ["WORLD_SIZE"])
        if world != config.nproc:
            raise ConfigError(f"nproc={config.nproc} but the launcher started {world} processes")
    with engine_run.start(config, project=task.name, client=client) as r, TorchRun(r, config) as t:
        return _train(config, task, r, t)


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


def _train(config: TrainerConfig, task: Task, r: engine_run.Run, t: TorchRun) -> RunResult:
    import random

    import numpy as np

    device = t.device
    torch.manual_seed(config.seed)
    random.seed(config.seed + t.rank)
    np.random.seed(config.seed + t.rank)
    if r.is_primary:
        task.prepare(config, True)
    t.barrier()
    if not r.is_primary:
        task.prepare(config, False)

    model = task.build_model(config)
    torch.manual_seed(config.seed + t.rank)  # per-rank dropout streams after an identical init
    trained = t.wrap(model)
    model = t.unwrap(trained)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    optimizers = {"adamw": optimizer}

    steps_per_epoch = task.steps_per_epoch(config, t.world_size)
    if steps_per_epoch < 1:
        raise ConfigError(f"the training data gives 0 steps per epoch at batch_size={config.batch_size} x "
                          f"{t.world_size} processes; lower batch_size or add data")
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    step, epoch, skip = 0, 0, 0
    history: list[tuple[int, float]] = []
    resumed = t.restore(trained, optimizers)
    if resumed is not None:
        step, epoch, skip = resumed.step, resumed.meta["epoch"], resumed.meta["batch_in_epoch"]
        history = [tuple(x) for x in t.extra.get("loss_history", [])]

    r.print_banner(f"run {config.run_name} ({t.world_size} x {device}, {config.precision}, "
                   f"{config.strategy if t.world_size > 1 else 'single process'}, {total_steps} steps)")

    profiler = None
    if config.profile and r.is_primary:
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                                 if device.type == "cuda" else []),
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=config.profile_steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(r.dir / "profile")),
            record_shapes=True)
        profiler.start()

    r.set_total_steps(total_steps, start_step=step)
    last_loss = float("nan")
    eval_metrics: dict[str, float] = {}
    window_loss = torch.zeros((), device=device)
    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
    last_checkpoint: Path | None = None
    epoch_done, batch_in_epoch = False, skip
    stopped = False
    # Only rank 0 evaluates, except under fsdp, where a forward pass is a collective: every rank takes part.
    evaluates = r.is_primary or t.strategy == "fsdp"

    def checkpoint_now(epoch_: int, batch_in_epoch_: int) -> Path:
        return t.save(step, trained, optimizers, meta={"epoch": epoch_, "batch_in_epoch": batch_in_epoch_},
                      extra={"loss_history": [list(h) for h in history]})

    trained.train()
    while epoch < config.epochs and step < total_steps and not stopped:
        batch_in_epoch = skip
        batches = task.train_batches(config, epoch=epoch, rank=t.rank, world_size=t.world_size, skip_batches=skip)
        with t.rng_isolated():
            batches = iter(batches)
        for batch in batches:
            if batch_in_epoch >= steps_per_epoch or step >= total_steps:
                break
            with t.autocast():
                loss, parts, samples = task.compute_loss(trained, batch, device)
            t.backward_and_step(loss, optimizer, trained.parameters(), config.grad_clip)
            step += 1
            batch_in_epoch += 1
            window_loss += loss.detach().float()
            window_steps += 1
            window_samples += samples
            if profiler is not None:
                profiler.step()
            if step % config.log_every == 0 or step == total_steps:
                mean_loss = float(t.all_reduce_mean(window_loss / window_steps))
                # Checked once per log window, not per step: a per-step check is a host sync every step.
                if not math.isfinite(mean_loss):
                    raise EngineError(f"loss became {mean_loss} between steps {step - window_steps + 1} and "
                                      f"{step} (epoch {epoch}); lower --lr, use --precision fp32, or check "
                                      f"the inputs of those batches")
                rate = window_samples * t.world_size / max(time.perf_counter() - window_start, 1e-9)
                last_loss = mean_loss
                history.append((step, mean_loss))
                if r.is_primary:
                    r.log({"train/loss": mean_loss, "train/samples_per_s": rate,
                           **{f"train/{k}": v for k, v in parts.items()}}, step)
                window_loss.zero_()
                window_steps, window_samples, window_start = 0, 0, time.perf_counter()
            if t.should_stop(step, every=config.log_every):
                stopped = True
                break
            if step % config.checkpoint_every == 0 and step < total_steps:
                last_checkpoint = checkpoint_now(epoch, batch_in_epoch)
        epoch_done = batch_in_epoch >= steps_per_epoch
        if stopped:
            break
        if epoch_done:
            epoch += 1
            skip = 0
            if config.eval_every_epoch and evaluates:
                eval_metrics = _evaluate(task, model, config, device)
                if r.is_primary:
                    r.log({f"eval/{k}": v for k, v in eval_metrics.items()}, step)
            trained.train()
        else:
            break  # max_steps reached mid-epoch
    if stopped:
        last_checkpoint = checkpoint_now(epoch, batch_in_epoch)
        if profiler is not None:
            profiler.stop()
        r.print_summary(f"stopped by {r.stop_signal and signal.Signals(r.stop_signal).name} at step {step} "
                        f"after writing {last_checkpoint.name}; relaunch with --resume to continue")
        return RunResult(r.dir, r.run_id, r.target.tracking_uri, step, last_loss, eval_metrics, None,
                         r.tensorboard_dir, last_checkpoint, stopped_by=r.stop_signal)
    if not eval_metrics and evaluates:
        eval_metrics = _evaluate(task, model, config, device)
        if r.is_primary:
            r.log({f"eval/{k}": v for k, v in eval_metrics.items()}, step)
    last_checkpoint = checkpoint_now(epoch, 0 if epoch_done else batch_in_epoch)
    export = None
    if config.export:
        inputs, input_names, output_names = task.example_inputs(config)
        export = t.export(trained, inputs, input_names, output_names, build=lambda: task.build_model(config))
    if r.is_primary:
        if profiler is not None:
            profiler.stop()
            r.log_artifact(r.dir / "profile", "profile")
        curve = _save_loss_curve(history, r.dir / "loss_curve.png")
        if curve:
            r.log_artifact(curve)
        if (r.dir / "figures").is_dir():  # a task's evaluation figures (e.g. ml/engine/figures.py)
            r.log_artifact(r.dir / "figures", "figures")
        r.log_artifact(last_checkpoint, "checkpoint")
        r.write_result(global_step=step, final_loss=last_loss, eval_metrics=eval_metrics)
        r.print_summary(f"done at step {step}: loss {last_loss:.4f}"
                        + "".join(f", {k} {v:.4f}" for k, v in sorted(eval_metrics.items())))
    return RunResult(r.dir, r.run_id, r.target.tracking_uri, step, last_loss, eval_metrics, export,
                     r.tensorboard_dir, last_checkpoint)


def _evaluate(task: Task, model: torch.nn.Module, config: Any, device: torch.device) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, config, device)
    model.train()
    return {k: float(v) for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
