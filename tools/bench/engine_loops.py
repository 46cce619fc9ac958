"""Benchmark: what the engine's services cost a hand-written loop, and what the `Task` loop costs.

Prints markdown for docs/benchmarks.md. Same homefeed model, data, batch size and step count for all three:
  1. bare: the hand-written loop of ml/homefeed/train_native.py with nothing of the engine (plain DataLoader,
     forward, loss, backward, clip, AdamW + Adagrad steps, LR schedule);
  2. services: ml/homefeed/train_native.py itself (run.start + TorchRun: MLflow on sqlite, TensorBoard,
     progress, periodic atomic checkpoints, SIGTERM polling, loss all-reduce bookkeeping);
  3. task: the engine's own `Task` loop (ml/engine/trainer.py) on the same model (one AdamW), against
     4. the bare loop with that one AdamW.
Loop time runs from the end of the first optimizer step to the end of the last (model build, data generation,
evaluation and export are outside it). Runs alternate; medians are reported.

usage: tools/bazel run //tools/bench:engine_loops -- [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn

from ml.engine.config import parse_config
from ml.engine.trainer import train as task_train
from ml.homefeed import data
from ml.homefeed import model as hf_model
from ml.homefeed.train import HomefeedConfig, HomefeedTask
from ml.homefeed.train_native import NativeConfig, warmup_cosine
from ml.homefeed.train_native import train as native_train


class StepClock:
    """Timestamps the end of every AdamW step (every loop under test makes exactly one per training step)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __enter__(self) -> StepClock:
        self.original = torch.optim.AdamW.step
        clock = self

        def step(opt, *args, **kwargs):
            out = clock.original(opt, *args, **kwargs)
            clock.stamps.append(time.perf_counter())
            return out

        torch.optim.AdamW.step = step
        return self

    def __exit__(self, *exc) -> None:
        torch.optim.AdamW.step = self.original

    def seconds(self) -> float:
        return self.stamps[-1] - self.stamps[0]


def bare_loop(config: NativeConfig, helpers: HomefeedTask, *, two_optimizers: bool) -> None:
    """train_native's loop (two_optimizers) or the Task loop's (one AdamW over everything), without the engine."""
    torch.manual_seed(config.seed)
    net = helpers.build_model(config)
    tables = [p for m in net.modules() if isinstance(m, nn.Embedding) for p in m.parameters()] if two_optimizers else []
    ids = {id(p) for p in tables}
    dense_opt = torch.optim.AdamW([p for p in net.parameters() if id(p) not in ids], lr=config.lr,
                                  weight_decay=config.weight_decay)
    table_opt = torch.optim.Adagrad(tables, lr=config.table_lr) if tables else None
    sched = torch.optim.lr_scheduler.LambdaLR(dense_opt, warmup_cosine(config.max_steps, config.warmup_steps)) \
        if two_optimizers else None
    stream = data.ParquetStream(helpers.train_files, config.batch_size, shuffle=True, seed=config.seed, epoch=0,
                                drop_last=True)
    net.train()
    for i, batch in enumerate(torch.utils.data.DataLoader(stream, batch_size=None)):
        if i == config.max_steps:
            break
        click, save = net(*hf_model.batch_inputs(batch))
        loss, _ = hf_model.multitask_loss(click, save, batch["click"], batch["save"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        dense_opt.step()
        dense_opt.zero_grad(set_to_none=True)
        if table_opt is not None:
            table_opt.step()
            table_opt.zero_grad(set_to_none=True)
            sched.step()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = ["--max-steps", str(args.steps), "--epochs", "1", "--no-export", "--no-eval-every-epoch",
            "--device", "cpu", "--checkpoint-every", "50"]
    times: dict[str, list[float]] = {"bare": [], "services": [], "bare_one": [], "task": []}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ.setdefault("TEST_TMPDIR", tmp)  # synthetic shards go under <workspace>/.mlenv otherwise
        helpers = HomefeedTask()
        warm = parse_config(NativeConfig, base + ["--set", f"run_dir={tmp}/warm"])
        helpers.prepare(warm, True)  # generate the shards once, outside the timings
        for i in range(args.repeats):
            with StepClock() as clock:
                bare_loop(warm, helpers, two_optimizers=True)
            times["bare"].append(clock.seconds())
            with StepClock() as clock:
                native_train(parse_config(NativeConfig, base + ["--set", f"run_dir={tmp}/n{i}",
                                                                "--set", f"run_name=n{i}"]))
            times["services"].append(clock.seconds())
            with StepClock() as clock:
                task_train(parse_config(HomefeedConfig, base + ["--set", f"run_dir={tmp}/t{i}",
                                                                "--set", f"run_name=t{i}"]), HomefeedTask())
            times["task"].append(clock.seconds())
            with StepClock() as clock:
                bare_loop(warm, helpers, two_optimizers=False)
            times["bare_one"].append(clock.seconds())
    med = {k: statistics.median(v) for k, v in times.items()}
    n = args.steps - 1
    print(f"| loop ({args.steps} steps, batch {warm.batch_size}, default model, {torch.get_num_threads()} threads) "
          f"| seconds (median of {args.repeats}) | steps/s | vs bare |")
    print("|---|---|---|---|")
    print(f"| bare hand-written loop (AdamW + Adagrad + schedule) | {med['bare']:.2f} | {n / med['bare']:.1f} | |")
    print(f"| same loop on the services (train_native.py) | {med['services']:.2f} | {n / med['services']:.1f} | "
          f"{100 * (med['services'] / med['bare'] - 1):+.1f}% |")
    print(f"| bare loop, one AdamW (the Task loop's optimizer) | {med['bare_one']:.2f} | {n / med['bare_one']:.1f} | |")
    print(f"| `Task` loop (trainer.py, one AdamW) | {med['task']:.2f} | {n / med['task']:.1f} | "
          f"{100 * (med['task'] / med['bare_one'] - 1):+.1f}% |")
    print("\nall runs: " + "; ".join(f"{k}: {', '.join(f'{x:.2f}' for x in v)}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
