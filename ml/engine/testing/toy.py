"""A tiny but real task for testing the engine itself: an MLP classifying a fixed synthetic dataset.

Each global batch (batch_size x world_size rows) is split across ranks by striding, so a DDP run with B rows
per rank computes exactly the gradients of a single process with B x world_size rows (dropout off): the
property the DDP-equivalence test checks.

    python ml/engine/testing/toy.py --epochs 1 --nproc 2 --set run_dir=/tmp/x
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ml.engine.config import TrainerConfig
from ml.engine.metrics import log_loss, roc_auc
from ml.engine.trainer import run

__all__ = ["ToyConfig", "ToyTask", "main"]


@dataclass
class ToyConfig(TrainerConfig):
    # keys a resumed run may change without changing its result (see trainer._RESUME_IGNORES)
    resume_ignores: ClassVar[tuple[str, ...]] = ("fail_at_step", "step_delay_s")

    rows: int = field(default=2048, metadata={"help": "training rows"})
    features: int = field(default=16, metadata={"help": "input features"})
    hidden: int = field(default=32, metadata={"help": "hidden width"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle rows each epoch"})
    fail_at_step: int | None = field(default=None, metadata={"help": "raise inside the loss at this step (tests)"})
    step_delay_s: float = field(default=0.0, metadata={"help": "sleep this long in every training step, so a test "
                                                               "that acts mid-run (a pruner's SIGTERM) is not "
                                                               "outrun by a fast toy model on an idle machine"})

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.dropout < 1:
            from ml.engine.errors import ConfigError

            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def _dataset(rows: int, features: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=gen)
    w = torch.randn(features, generator=gen)
    y = ((x @ w + 0.3 * torch.randn(rows, generator=gen)) > 0).float()
    return x, y


class ToyTask:
    """Toy MLP classification (engine tests)."""

    name = "toy"

    def __init__(self) -> None:
        self.calls = 0
        self.fail_at: int | None = None
        self.step_delay_s = 0.0

    def prepare(self, config: ToyConfig, is_main: bool) -> None:
        self.fail_at = config.fail_at_step
        self.step_delay_s = config.step_delay_s
        x, y = _dataset(config.rows + 512, config.features)
        self.x, self.y = x[:config.rows], y[:config.rows]
        self.eval_x, self.eval_y = x[config.rows:], y[config.rows:]

    def build_model(self, config: ToyConfig) -> nn.Module:
        return nn.Sequential(nn.Linear(config.features, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                             nn.Linear(config.hidden, 1), nn.Flatten(0))

    def steps_per_epoch(self, config: ToyConfig, world_size: int) -> int:
        return config.rows // (config.batch_size * world_size)

    def train_batches(self, config: ToyConfig, *, epoch: int, rank: int, world_size: int, skip_batches: int):
        order = (torch.randperm(config.rows, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
                 if config.shuffle else torch.arange(config.rows))
        global_batch = config.batch_size * world_size
        for b in range(skip_batches, self.steps_per_epoch(config, world_size)):
            idx = order[b * global_batch:(b + 1) * global_batch][rank::world_size]
            yield self.x[idx], self.y[idx]

    def compute_loss(self, model: nn.Module, batch, device: torch.device):
        self.calls += 1
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        x, y = (t.to(device) for t in batch)
        logits = model(x).float()
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        return loss, {"bce": float(loss.detach())}, len(y)

    def evaluate(self, model: nn.Module, config: ToyConfig, device: torch.device) -> dict[str, float]:
        probs = torch.sigmoid(model(self.eval_x.to(device)).float()).cpu().numpy()
        labels = self.eval_y.numpy()
        return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs)}

    def example_inputs(self, config: ToyConfig):
        return (self.eval_x[:8],), ["x"], ["logit"]


def main(argv: list[str] | None = None) -> int:
    task = ToyTask()
    args = list(sys.argv[1:] if argv is None else argv)
    return run(ToyConfig, task, args, prog="toy")


if __name__ == "__main__":
    sys.exit(main())
