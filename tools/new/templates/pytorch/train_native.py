"""Train __project__ with a hand-written PyTorch loop on the engine's services.

    tools/bazel run //ml/__project__:train                   # a few seconds on 2 CPU cores
    tools/bazel run //ml/__project__:train -- --help         # every flag
    tools/bazel run //ml/__project__:train -- --nproc 2 --strategy fsdp

Why a loop of your own: it is yours to change (two optimizers, a GAN, a curriculum). This one trains the
embedding tables with Adagrad at a constant rate and the MLP with AdamW under linear warmup + cosine decay.
The engine gives the rest as services this loop calls: ml.engine.run (run folder, flags' identity, MLflow,
TensorBoard, checkpoint folders, SIGTERM) and ml.engine.torch.TorchRun (process group, DDP/FSDP2, precision,
checkpoint state with RNG, export). Resume is exact: the checkpoint holds both optimizers, the scheduler, the
RNG and the data position.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ml.__project__ import data, model
from ml.engine import distributed, run
from ml.engine.config import TrainerConfig, parse_config
from ml.engine.errors import ConfigError, EngineError
from ml.engine.metrics import log_loss, roc_auc
from ml.engine.torch import TorchRun

__all__ = ["TrainConfig", "main", "train"]

PROJECT = "__project__"


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig(TrainerConfig):
    """Train the __project__ click model with a hand-written loop (Adagrad for the tables, AdamW for the MLP)."""

    train_rows: int = field(default=50_000, metadata=_h("synthetic training rows"))
    eval_rows: int = field(default=10_000, metadata=_h("synthetic held-out rows"))
    data_seed: int = field(default=0, metadata=_h("seed of the synthetic world"))
    embed_dim: int = field(default=16, metadata=_h("embedding width of each categorical field"))
    hidden: tuple[int, ...] = field(default=(64, 32), metadata=_h("MLP widths"))
    dropout: float = field(default=0.0, metadata=_h("dropout after each hidden layer"))
    table_lr: float = field(default=0.05, metadata=_h("Adagrad learning rate of the embedding tables (constant)"))
    warmup_steps: int = field(default=20, metadata=_h("linear warmup of the MLP's AdamW learning rate"))

    def validate(self) -> None:
        super().validate()
        for key in ("train_rows", "eval_rows", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be positive widths, e.g. 64,32; got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.table_lr <= 0:
            raise ConfigError(f"table_lr must be > 0, got {self.table_lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def warmup_cosine(total_steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return factor


def build_model(config: TrainConfig) -> nn.Module:
    return model.ClickModel(model.ModelConfig(cardinalities=data.CARDINALITIES, num_dense=data.NUM_DENSE,
                                              embed_dim=config.embed_dim, hidden=tuple(config.hidden),
                                              dropout=config.dropout))


def evaluate(net: nn.Module, held_out: dict[str, torch.Tensor], base_rate: float, device: torch.device) -> dict:
    probs = torch.sigmoid(net(held_out["cat"].to(device), held_out["dense"].to(device)).float()).cpu().numpy()
    labels = held_out["label"].numpy()
    return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs),
            "baseline_logloss": log_loss(labels, np.full_like(probs, base_rate))}


def train(config: TrainConfig) -> int:
    """One rank of the run. Returns the process exit code."""
    with run.start(config, project=PROJECT) as r, TorchRun(r, config) as t:
        torch.manual_seed(config.seed)
        rows = {k: torch.from_numpy(v) for k, v in data.generate(config.train_rows, split="train",
                                                                 data_seed=config.data_seed).items()}
        held_out = {k: torch.from_numpy(v) for k, v in data.generate(config.eval_rows, split="eval",
                                                                     data_seed=config.data_seed).items()}
        net = build_model(config)
        torch.manual_seed(config.seed + t.rank)  # per-rank dropout streams after an identical init
        net = t.wrap(net)
        tables = [p for m in net.modules() if isinstance(m, nn.Embedding) for p in m.parameters()]
        table_ids = {id(p) for p in tables}
        dense = [p for p in net.parameters() if id(p) not in table_ids]
        optimizers = {"dense": torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay),
                      "tables": torch.optim.Adagrad(tables, lr=config.table_lr)}

        steps_per_epoch = config.train_rows // (config.batch_size * t.world_size)
        if steps_per_epoch < 1:
            raise ConfigError(f"0 steps per epoch at batch_size={config.batch_size} x {t.world_size} processes; "
                              f"lower --batch-size or raise --set train_rows")
        total = min(steps_per_epoch * config.epochs, config.max_steps or math.inf)
        schedulers = {"dense": torch.optim.lr_scheduler.LambdaLR(optimizers["dense"],
                                                                 warmup_cosine(total, config.warmup_steps))}

        step, epoch, skip = 0, 0, 0
        resumed = t.restore(net, optimizers, schedulers=schedulers)
        if resumed is not None:
            step, epoch, skip = resumed.step, resumed.meta["epoch"], resumed.meta["batch_in_epoch"]
        r.print_banner(f"run {config.run_name} (hand-written loop; {t.world_size} x {t.device}, {config.precision}, "
                       f"{total} steps)")
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
            batch_in_epoch = skip
            for index in data.batch_slices(config.train_rows, config.batch_size, epoch=epoch, seed=config.seed,
                                           rank=t.rank, world_size=t.world_size, skip_batches=skip):
                if step >= total:
                    break
                index = torch.from_numpy(index)
                batch = {k: v[index].to(t.device, non_blocking=True) for k, v in rows.items()}
                with t.autocast():
                    logit = net(batch["cat"], batch["dense"])
                loss = nn.functional.binary_cross_entropy_with_logits(logit.float(), batch["label"])
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
                metrics = evaluate(t.unwrap(net), held_out, data.base_rate(rows["label"].numpy()), t.device)
        if config.export:
            inputs = (held_out["cat"][:8], held_out["dense"][:8])
            t.export(net, inputs, list(model.INPUT_NAMES), list(model.OUTPUT_NAMES), build=lambda: build_model(config))
        if r.is_primary:
            r.log({f"eval/{k}": v for k, v in metrics.items()}, step)
            r.log_artifact(r.store.folder / r.store.name(step), "checkpoint")
            r.write_result(global_step=step, final_loss=last_loss, eval_metrics=metrics)
            r.print_summary(f"done at step {step}: loss {last_loss:.4f}"
                            + "".join(f", {k} {v:.4f}" for k, v in sorted(metrics.items())))
    return 0


def main(argv: list[str] | None = None) -> int:
    prog = "tools/bazel run //ml/__project__:train --"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse_config(TrainConfig, args, prog=prog, description=TrainConfig.__doc__)
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
