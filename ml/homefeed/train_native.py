"""Home-feed ranker trained by a hand-written PyTorch loop: embedding tables get their own optimizer.

    tools/bazel run //ml/homefeed:train_native                       # same data and model as :train
    tools/bazel run //ml/homefeed:train_native -- --nproc 2 --strategy fsdp
    tools/bazel run //ml/homefeed:train_native -- --help

Why a separate loop: recommendation teams commonly train the sparse embedding tables with Adagrad at a constant,
larger learning rate, and the dense network with AdamW under warmup + cosine decay. The engine's `Task` loop
has one optimizer; this file is what a team writes instead: a plain `for` loop that calls the engine's
services (ml.engine.run for the run folder, tracking, checkpoint files and SIGTERM; ml.engine.torch for the
process group, DDP/FSDP2, precision, checkpoint state and export). Model and data come from model.py and
data.py (data preparation and evaluation reuse train.HomefeedTask's helpers); flags are :train's plus the
few below.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ml.engine import distributed, run
from ml.engine.config import parse_config
from ml.engine.errors import ConfigError, EngineError
from ml.engine.torch import TorchRun
from ml.homefeed import data, model
from ml.homefeed.train import HomefeedConfig, HomefeedTask

__all__ = ["NativeConfig", "main", "train"]

PROJECT = "homefeed-native"


@dataclass
class NativeConfig(HomefeedConfig):
    """Train the home-feed ranker with a hand-written loop (Adagrad for embedding tables, AdamW for the rest)."""

    table_lr: float = field(default=0.05, metadata={"help": "Adagrad learning rate of the embedding tables (constant)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warmup of the dense AdamW learning rate"})

    def validate(self) -> None:
        super().validate()
        if self.table_lr <= 0:
            raise ConfigError(f"table_lr must be > 0, got {self.table_lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def warmup_cosine(total_steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train(config: NativeConfig) -> int:
    """One rank of the run. Returns the process exit code."""
    import random

    import numpy as np

    with run.start(config, project=PROJECT) as r, TorchRun(r, config) as t:
        torch.manual_seed(config.seed)
        random.seed(config.seed + t.rank)
        np.random.seed(config.seed + t.rank)
        helpers = HomefeedTask()  # data generation / shard discovery, evaluation, example inputs
        if r.is_primary:
            helpers.prepare(config, True)
        t.barrier()
        if not r.is_primary:
            helpers.prepare(config, False)

        net = helpers.build_model(config)
        torch.manual_seed(config.seed + t.rank)  # per-rank dropout streams after an identical init
        net = t.wrap(net)
        tables = [p for m in net.modules() if isinstance(m, nn.Embedding) for p in m.parameters()]
        table_ids = {id(p) for p in tables}
        dense = [p for p in net.parameters() if id(p) not in table_ids]
        optimizers = {"dense": torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay),
                      "tables": torch.optim.Adagrad(tables, lr=config.table_lr)}

        steps_per_epoch = helpers.steps_per_epoch(config, t.world_size)  # the reader's, or Ray Data's split
        if steps_per_epoch < 1:
            raise ConfigError(f"0 steps per epoch at batch_size={config.batch_size} x {t.world_size} processes; "
                              f"lower --batch-size or add data")
        total = min(steps_per_epoch * config.epochs, config.max_steps or math.inf)
        schedulers = {"dense": torch.optim.lr_scheduler.LambdaLR(optimizers["dense"],
                                                                 warmup_cosine(total, config.warmup_steps))}

        step, epoch, skip = 0, 0, 0
        resumed = t.restore(net, optimizers, schedulers=schedulers)
        if resumed is not None:
            step, epoch, skip = resumed.step, resumed.meta["epoch"], resumed.meta["batch_in_epoch"]
        r.print_banner(f"run {config.run_name} (hand-written loop; {t.world_size} x {t.device}, {config.precision}, "
                       f"{config.strategy if t.world_size > 1 else 'single process'}, {total} steps)")
        r.set_total_steps(total, start_step=step)

        def checkpoint(epoch_: int, batch: int) -> None:
            if batch >= steps_per_epoch:
                epoch_, batch = epoch_ + 1, 0
            t.save(step, net, optimizers, schedulers=schedulers, meta={"epoch": epoch_, "batch_in_epoch": batch})

        loss_sum, window, window_start, last_loss = torch.zeros((), device=t.device), 0, time.perf_counter(), \
            float("nan")
        stopped, batch_in_epoch = False, skip
        net.train()
        while epoch < config.epochs and step < total and not stopped:
            if config.input == "ray_data":  # this rank's share of the Ray driver's Dataset
                loader = helpers.train_batches(config, epoch=epoch, rank=t.rank, world_size=t.world_size,
                                               skip_batches=skip)
            else:
                stream = data.ParquetStream(helpers.train_files, config.batch_size, rank=t.rank,
                                            world_size=t.world_size, shuffle=True, seed=config.seed, epoch=epoch,
                                            drop_last=True, skip_batches=skip)
                loader = torch.utils.data.DataLoader(
                    stream, batch_size=None, num_workers=config.num_workers,
                    generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
            with t.rng_isolated():
                batches = iter(loader)
            batch_in_epoch = skip
            for batch in batches:
                if batch_in_epoch >= steps_per_epoch or step >= total:
                    break
                batch = {k: v.to(t.device, non_blocking=True) for k, v in batch.items()}
                with t.autocast():
                    click, save = net(*model.batch_inputs(batch))
                loss, _ = model.multitask_loss(click.float(), save.float(), batch["click"], batch["save"],
                                               save_weight=config.save_weight)
                t.backward_and_step(loss, list(optimizers.values()), net.parameters(), config.grad_clip)
                schedulers["dense"].step()
                step += 1
                batch_in_epoch += 1
                loss_sum += loss.detach().float()
                window += 1
                if step % config.log_every == 0 or step == total:
                    last_loss = float(t.all_reduce_mean(loss_sum / window))
                    if not math.isfinite(last_loss):
                        raise EngineError(f"loss became {last_loss} by step {step}; lower --lr / --set table_lr")
                    if r.is_primary:
                        rate = window * config.batch_size * t.world_size / (time.perf_counter() - window_start)
                        r.log({"train/loss": last_loss, "train/samples_per_s": rate,
                               "train/lr_dense": schedulers["dense"].get_last_lr()[0]}, step)
                    loss_sum.zero_()
                    window, window_start = 0, time.perf_counter()
                if t.should_stop(step, every=config.log_every):
                    stopped = True
                    break
                if step % config.checkpoint_every == 0 and step < total:
                    checkpoint(epoch, batch_in_epoch)
            if stopped or batch_in_epoch < steps_per_epoch:
                break
            epoch, skip, batch_in_epoch = epoch + 1, 0, 0

        checkpoint(epoch, batch_in_epoch)
        if stopped:
            r.print_summary(f"stopped at step {step} after a checkpoint; relaunch with --resume to continue")
            return 128 + r.stop_signal

        metrics = {}
        if r.is_primary or config.strategy == "fsdp":  # an FSDP forward is a collective: every rank evaluates
            net.eval()
            with torch.no_grad():
                metrics = {k: v for k, v in helpers.evaluate(t.unwrap(net), config, t.device).items() if v == v}
        if config.export:
            inputs, input_names, output_names = helpers.example_inputs(config)
            t.export(net, inputs, input_names, output_names, build=lambda: helpers.build_model(config))
        if r.is_primary:
            r.log({f"eval/{k}": v for k, v in metrics.items()}, step)
            r.log_artifact(r.store.folder / r.store.name(step), "checkpoint")
            r.write_result(global_step=step, final_loss=last_loss, eval_metrics=metrics)
            r.print_summary(f"done at step {step}: loss {last_loss:.4f}"
                            + "".join(f", {k} {v:.4f}" for k, v in sorted(metrics.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = "tools/bazel run //ml/homefeed:train_native --"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_config(NativeConfig, args, prog=prog, description=NativeConfig.__doc__)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if not distributed.in_launched_worker():
        config = run.pin_identity(config, PROJECT)
        args += ["--set", f"run_name={config.run_name}", "--set", f"run_dir={config.run_dir}"]
        code = distributed.launch(config.nproc, [sys.argv[0], *args])
        if code is not None:
            return code
    try:
        return train(config)
    except EngineError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
