"""Train __project__ with the engine's `Task` loop.

    tools/bazel run //ml/__project__:train                   # a few seconds on 2 CPU cores
    tools/bazel run //ml/__project__:train -- --help         # every flag
    tools/bazel run //ml/__project__:train -- --nproc 2 --precision bf16 --set embed_dim=32

model.py and data.py are native; this file only wires them into ml.engine.trainer, which owns the loop and
gives flags, DDP, precision, checkpoints and exact resume, MLflow, TensorBoard and export. Evaluation
reports held-out AUC and log loss next to the base-rate baseline (what "no model" scores).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ml.__project__ import data, model
from ml.engine.config import TrainerConfig
from ml.engine.errors import ConfigError
from ml.engine.metrics import log_loss, roc_auc
from ml.engine.trainer import run

__all__ = ["ProjectTask", "TrainConfig", "main"]


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig(TrainerConfig):
    """Train the __project__ click model."""

    train_rows: int = field(default=50_000, metadata=_h("synthetic training rows"))
    eval_rows: int = field(default=10_000, metadata=_h("synthetic held-out rows"))
    data_seed: int = field(default=0, metadata=_h("seed of the synthetic world"))
    embed_dim: int = field(default=16, metadata=_h("embedding width of each categorical field"))
    hidden: tuple[int, ...] = field(default=(64, 32), metadata=_h("MLP widths"))
    dropout: float = field(default=0.0, metadata=_h("dropout after each hidden layer"))

    def validate(self) -> None:
        super().validate()
        for key in ("train_rows", "eval_rows", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"hidden must be positive widths, e.g. 64,32; got {self.hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def _tensors(rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in rows.items()}


class ProjectTask:
    """What the engine needs from __project__: data, model, loss, evaluation, example inputs."""

    name = "__project__"

    def prepare(self, config: TrainConfig, is_main: bool) -> None:
        self.train = _tensors(data.generate(config.train_rows, split="train", data_seed=config.data_seed))
        self.eval = _tensors(data.generate(config.eval_rows, split="eval", data_seed=config.data_seed))

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return model.ClickModel(model.ModelConfig(cardinalities=data.CARDINALITIES, num_dense=data.NUM_DENSE,
                                                  embed_dim=config.embed_dim, hidden=tuple(config.hidden),
                                                  dropout=config.dropout))

    def steps_per_epoch(self, config: TrainConfig, world_size: int) -> int:
        return config.train_rows // (config.batch_size * world_size)

    def train_batches(self, config: TrainConfig, *, epoch: int, rank: int, world_size: int, skip_batches: int):
        for rows in data.batch_slices(config.train_rows, config.batch_size, epoch=epoch, seed=config.seed, rank=rank,
                                      world_size=world_size, skip_batches=skip_batches):
            index = torch.from_numpy(rows)
            yield {key: value[index] for key, value in self.train.items()}

    def compute_loss(self, net: torch.nn.Module, batch, device: torch.device):
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        logit = net(batch["cat"], batch["dense"]).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"])
        return loss, {"bce": float(loss.detach())}, int(batch["label"].shape[0])

    def evaluate(self, net: torch.nn.Module, config: TrainConfig, device: torch.device) -> dict[str, float]:
        probs = torch.sigmoid(net(self.eval["cat"].to(device), self.eval["dense"].to(device)).float()).cpu().numpy()
        labels = self.eval["label"].numpy()
        base = np.full_like(probs, data.base_rate(self.train["label"].numpy()))
        return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs),
                "baseline_logloss": log_loss(labels, base)}

    def example_inputs(self, config: TrainConfig):
        return (self.eval["cat"][:8], self.eval["dense"][:8]), list(model.INPUT_NAMES), list(model.OUTPUT_NAMES)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return run(TrainConfig, ProjectTask(), args, prog="tools/bazel run //ml/__project__:train --")


if __name__ == "__main__":
    sys.exit(main())
