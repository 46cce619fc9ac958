"""Benchmark: the engine's training loop vs a bare PyTorch loop, and the default homefeed run.

Prints markdown for docs/benchmarks.md. In one run, on the same model, data, optimizer and step count:
  1. a bare loop: DataLoader -> forward -> multitask loss -> backward -> clip -> AdamW step;
  2. the engine (ml/engine/trainer.py) with everything on: MLflow tracking (sqlite), TensorBoard, progress,
     periodic atomic checkpoints, loss all-reduce bookkeeping.
Loop time is measured from the first to the last step (model build, data generation, final evaluation and
export are excluded from both). Runs alternate bare/engine to spread machine noise; medians are reported.
Then `tools/bazel run //ml/homefeed:train` with its defaults: wall time and held-out metrics vs the
popularity baseline.

usage: python3 tools/bench/train_overhead.py [--steps 300] [--repeats 3] [--skip-default-run]
(run it through Bazel's environment: tools/bazel run //tools/bench:train_overhead -- ...)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ml.engine.config import parse_config
from ml.engine.trainer import train
from ml.homefeed import model as hf_model
from ml.homefeed.train import HomefeedConfig, HomefeedTask


class TimedTask(HomefeedTask):
    """Records when the first and last training step ran."""

    def __init__(self) -> None:
        super().__init__()
        self.first = self.last = None

    def compute_loss(self, net, batch, device):
        now = time.perf_counter()
        self.first = self.first or now
        out = super().compute_loss(net, batch, device)
        return out

    def note_step_end(self) -> None:
        self.last = time.perf_counter()


def engine_loop(config: HomefeedConfig) -> float:
    task = TimedTask()
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # timestamps the end of each optimizer step
        result = original(self, *args, **kwargs)
        task.note_step_end()
        return result

    torch.optim.AdamW.step = step
    try:
        train(config, task)
    finally:
        torch.optim.AdamW.step = original
    return task.last - task.first


def bare_loop(config: HomefeedConfig, task: HomefeedTask) -> float:
    torch.manual_seed(config.seed)
    net = task.build_model(config)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader = task.train_batches(config, epoch=0, rank=0, world_size=1, skip_batches=0)
    first = last = None
    for i, batch in enumerate(loader):
        if i == config.max_steps:
            break
        first = first or time.perf_counter()
        click_logit, save_logit = net(*hf_model.batch_inputs(batch))
        loss, _ = hf_model.multitask_loss(click_logit, save_logit, batch["click"], batch["save"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last = time.perf_counter()
    return last - first


def default_run(workspace: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([str(workspace / "tools" / "bazel"), "run", "//ml/homefeed:train"], cwd=workspace,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"default run failed:\n{proc.stderr[-3000:]}")
    done = next(l for l in proc.stderr.splitlines() if l.startswith("mlenv: done at step"))
    return elapsed, done


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-default-run", action="store_true")
    args = parser.parse_args()
    workspace = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", Path(__file__).resolve().parents[2]))

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        base = ["--max-steps", str(args.steps), "--epochs", "1", "--no-export", "--no-eval-every-epoch"]
        data_task = HomefeedTask()
        warm = parse_config(HomefeedConfig, base + ["--set", f"run_dir={tmp}/warm"])
        data_task.prepare(warm, True)  # generate (or reuse) the shards once, outside the timings
        bare, engine = [], []
        for i in range(args.repeats):
            bare.append(bare_loop(warm, data_task))
            cfg = parse_config(HomefeedConfig, base + ["--set", f"run_dir={tmp}/run{i}", "--set", f"run_name=bench{i}"])
            engine.append(engine_loop(cfg))
    b, e = statistics.median(bare), statistics.median(engine)
    threads = torch.get_num_threads()
    print(f"| loop ({args.steps} steps, batch {warm.batch_size}, default model, {threads} threads) "
          f"| seconds (median of {args.repeats}) | steps/s |")
    print("|---|---|---|")
    print(f"| bare PyTorch loop | {b:.2f} | {args.steps / b:.1f} |")
    print(f"| engine loop (tracking, TensorBoard, checkpoints, progress) | {e:.2f} | {args.steps / e:.1f} |")
    print(f"| engine overhead (goal <= 3%) | {100 * (e / b - 1):+.1f}% | |")
    print(f"\nall runs, bare: {', '.join(f'{x:.2f}' for x in bare)}; engine: {', '.join(f'{x:.2f}' for x in engine)}")
    if not args.skip_default_run:
        elapsed, done = default_run(workspace)
        metrics = dict(re.findall(r"(\w+) ([0-9.]+)", done.split(":", 1)[1]))
        print(f"\n`tools/bazel run //ml/homefeed:train` (defaults): {elapsed:.0f} s wall, including data generation "
              f"on a first run\n\n| held-out metric | model | popularity baseline |\n|---|---|---|")
        for head in ("click", "save"):
            for kind in ("auc", "logloss"):
                print(f"| {head} {kind} | {float(metrics[f'{head}_{kind}']):.4f} | "
                      f"{float(metrics[f'baseline_{head}_{kind}']):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
