"""Home-feed engagement ranking: train the DCN-v2 + sequence-transformer ranker on synthetic Parquet shards.

    tools/bazel run //ml/homefeed:train                      # default: ~2 minutes on 2 CPU cores
    tools/bazel run //ml/homefeed:train -- --help            # every flag
    tools/bazel run //ml/homefeed:train -- --nproc 2 --precision bf16 --set embed_dim=64

The model (model.py) and data (data.py) are native PyTorch/pyarrow; this file only wires them into the
engine (ml/engine), which provides flags, DDP, precision, checkpoints, tracking, TensorBoard and export.
Data: synthetic shards are generated once per world config into `.mlenv/data/homefeed/<digest>/`; point
`--data-dir` at a folder of `train-*.parquet` / `eval-*.parquet` shards with data.SCHEMA to use real data.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ml.data import ray_data
from ml.engine.config import TrainerConfig, parse_config
from ml.engine.errors import ConfigError
from ml.engine.figures import expected_calibration_error, save_ranking_figures
from ml.engine.metrics import log_loss, roc_auc
from ml.engine.tracking import workspace_dir
from ml.engine.trainer import run
from ml.homefeed import baseline, data, model

__all__ = ["HomefeedConfig", "HomefeedTask", "main", "ray_datasets"]

INPUTS = ("files", "ray_data")


def _h(text: str) -> dict:
    return {"help": text}


@dataclass
class HomefeedConfig(TrainerConfig):
    """Train the home-feed engagement ranker (P(click), P(save))."""

    resume_ignores: ClassVar[tuple[str, ...]] = ("data_dir",)

    # data
    data_dir: str | None = field(default=None, metadata=_h(
        "folder with train-*.parquet and eval-*.parquet shards (data.SCHEMA); none: generate synthetic data"))
    train_samples: int = field(default=500_000, metadata=_h("synthetic training rows"))
    eval_samples: int = field(default=50_000, metadata=_h("synthetic held-out rows"))
    num_shards: int = field(default=4, metadata=_h("Parquet shards per split (synthetic)"))
    num_users: int = field(default=5000, metadata=_h("synthetic users"))
    num_items: int = field(default=2000, metadata=_h("synthetic items"))
    seq_len: int = field(default=20, metadata=_h("recent actions per user fed to the sequence encoder"))
    data_seed: int = field(default=0, metadata=_h("seed of the synthetic world"))
    input: str = field(default="files", metadata=_h(
        "files: every rank reads its own stream of the shards in-process; ray_data: Ray Data reads and "
        "preprocesses them on the cluster's CPU workers and splits them among the ranks (only under Ray Train: "
        "`--on ray`; rows are not replayed exactly on a mid-epoch resume; num_workers is unused)"))
    # model
    embed_dim: int = field(default=32, metadata=_h("embedding width of ids, context and sequence tokens"))
    seq_layers: int = field(default=2, metadata=_h("transformer encoder layers over the action sequence"))
    seq_heads: int = field(default=4, metadata=_h("attention heads (must divide embed_dim)"))
    cross_layers: int = field(default=3, metadata=_h("DCN-v2 cross layers"))
    mlp_dims: tuple[int, ...] = field(default=(128, 64), metadata=_h("deep tower widths"))
    dropout: float = field(default=0.1, metadata=_h("dropout in the deep tower"))
    save_weight: float = field(default=1.0, metadata=_h("weight of the P(save) loss in the multi-task loss"))

    def validate(self) -> None:
        super().validate()
        for key in ("train_samples", "eval_samples", "num_shards", "num_users", "num_items", "seq_len", "embed_dim",
                    "seq_layers", "seq_heads", "cross_layers"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.embed_dim % self.seq_heads:
            raise ConfigError(f"embed_dim ({self.embed_dim}) must be divisible by seq_heads ({self.seq_heads})")
        if not self.mlp_dims or min(self.mlp_dims) < 1:
            raise ConfigError(f"mlp_dims must be positive widths, e.g. 128,64; got {self.mlp_dims}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input not in INPUTS:
            raise ConfigError(f"input must be one of {', '.join(INPUTS)}; got {self.input!r}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise ConfigError(f"data_dir {self.data_dir} is not a folder; omit --data-dir to generate synthetic data")


class HomefeedTask:
    """Home-feed engagement ranking: DCN-v2 over dense + embedded features and a transformer over recent actions."""

    name = "homefeed"

    def __init__(self) -> None:
        self.train_files: list[Path] = []
        self.eval_files: list[Path] = []
        self.world: data.SyntheticConfig | None = None
        self._baseline: baseline.PopularityBaseline | None = None
        self.save_weight = 1.0

    # -- data --------------------------------------------------------------------------------------------
    def _synthetic(self, config: HomefeedConfig) -> data.SyntheticConfig:
        return data.SyntheticConfig(num_users=config.num_users, num_items=config.num_items, seq_len=config.seq_len,
                                    seed=config.data_seed)

    def _synthetic_dir(self, config: HomefeedConfig, world: data.SyntheticConfig) -> Path:
        key = json.dumps({"world": world.to_dict(), "train": config.train_samples, "eval": config.eval_samples,
                          "shards": config.num_shards}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return workspace_dir() / ".mlenv" / "data" / "homefeed" / digest

    def prepare(self, config: HomefeedConfig, is_main: bool) -> None:
        if config.input == "ray_data" and not ray_data.in_train_worker():
            raise ConfigError("input=ray_data needs a Ray Train worker fed by the driver's Ray Datasets: launch "
                              "with `--on ray` (tools/launch), or drop `--set input=ray_data` to read the shards "
                              "in each process")
        self.find_shards(config, is_main)

    def find_shards(self, config: HomefeedConfig, is_main: bool) -> None:
        """Sets train_files/eval_files (the main process generates synthetic shards the first time)."""
        self.save_weight = config.save_weight
        if config.data_dir:
            folder = Path(config.data_dir)
            self.world = None
        else:
            self.world = self._synthetic(config)
            folder = self._synthetic_dir(config, self.world)
            done = folder / "COMPLETE"
            if is_main and not done.exists():
                print(f"mlenv: generating synthetic home-feed data in {folder}", file=sys.stderr, flush=True)
                data.generate_shards(folder, self.world, config.train_samples, config.num_shards, split="train")
                data.generate_shards(folder, self.world, config.eval_samples, max(1, config.num_shards // 2),
                                     split="eval")
                done.write_text(json.dumps(self.world.to_dict(), sort_keys=True) + "\n")
        self.train_files = sorted(folder.glob("train-*.parquet"))
        self.eval_files = sorted(folder.glob("eval-*.parquet"))
        if not self.train_files or not self.eval_files:
            raise ConfigError(f"{folder} has no train-*.parquet / eval-*.parquet shards")
        for path in (self.train_files[0], self.eval_files[0]):
            import pyarrow.parquet as pq

            data.validate_schema(pq.read_schema(path), where=str(path))

    def _model_config(self, config: HomefeedConfig) -> model.HomefeedModelConfig:
        if self.world is not None:
            sizes = data.model_config_kwargs(self.world)
        else:  # real data: sizes from the config and the shards' fixed-width columns
            import pyarrow.parquet as pq

            first = pq.read_table(self.train_files[0]).slice(0, 1).to_pylist()[0]
            sizes = {"num_users": config.num_users, "num_items": config.num_items,
                     "context_cardinalities": tuple([1000] * len(first["context"])), "num_dense": len(first["dense"]),
                     "num_positions": 64, "seq_len": len(first["hist_items"]), "num_action_types": data.NUM_ACTION_TYPES}
        return model.HomefeedModelConfig(**sizes, embed_dim=config.embed_dim, seq_layers=config.seq_layers,
                                         seq_heads=config.seq_heads, cross_layers=config.cross_layers,
                                         mlp_dims=tuple(config.mlp_dims), dropout=config.dropout)

    def build_model(self, config: HomefeedConfig) -> torch.nn.Module:
        return model.HomefeedRanker(self._model_config(config))

    def steps_per_epoch(self, config: HomefeedConfig, world_size: int) -> int:
        if config.input == "ray_data":
            return ray_data.batches_per_epoch(data.num_rows(self.train_files), config.batch_size, world_size)
        return data.batches_per_epoch(self.train_files, config.batch_size, world_size, drop_last=True,
                                      num_workers=config.num_workers)

    def train_batches(self, config: HomefeedConfig, *, epoch: int, rank: int, world_size: int, skip_batches: int):
        if config.input == "ray_data":
            # This rank's share of the driver's Ray Dataset, already torch tensors (Ray prefetches them).
            return ray_data.torch_batches(config.batch_size, epoch=epoch, seed=config.seed, drop_last=True,
                                          skip_batches=skip_batches)
        workers = config.num_workers
        if skip_batches and workers > 1:
            raise ConfigError("--resume mid-epoch with --num-workers > 1 is not supported yet: the DataLoader "
                              "interleaves worker streams; resume with --num-workers 0 or 1")
        stream = data.ParquetStream(self.train_files, config.batch_size, rank=rank, world_size=world_size,
                                    shuffle=True, seed=config.seed, epoch=epoch, drop_last=True,
                                    skip_batches=skip_batches)
        # Its own generator: worker seeds are a function of (seed, epoch), never of the global RNG.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, generator=generator)

    def compute_loss(self, net: torch.nn.Module, batch, device: torch.device):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        click_logit, save_logit = net(*model.batch_inputs(batch))
        loss, parts = model.multitask_loss(click_logit.float(), save_logit.float(), batch["click"], batch["save"],
                                           save_weight=self.save_weight)
        return loss, parts, int(batch["click"].shape[0])

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, net: torch.nn.Module, config: HomefeedConfig, device: torch.device) -> dict[str, float]:
        if self._baseline is None:
            self._baseline = baseline.PopularityBaseline().fit(self.train_files)
        labels = {"click": [], "save": []}
        probs = {"click": [], "save": []}
        items = []
        stream = data.ParquetStream(self.eval_files, 4096, shuffle=False)
        for batch in stream:
            inputs = tuple(t.to(device) for t in model.batch_inputs(batch))
            click_logit, save_logit = net(*inputs)
            probs["click"].append(torch.sigmoid(click_logit.float()).cpu().numpy())
            probs["save"].append(torch.sigmoid(save_logit.float()).cpu().numpy())
            labels["click"].append(batch["click"].numpy())
            labels["save"].append(batch["save"].numpy())
            items.append(batch["item_id"].numpy())
        base_click, base_save = self._baseline.predict(np.concatenate(items))
        metrics = {}
        heads, baselines = {}, {}
        for head, base in (("click", base_click), ("save", base_save)):
            y, p = np.concatenate(labels[head]), np.concatenate(probs[head])
            metrics[f"{head}_auc"] = roc_auc(y, p)
            metrics[f"{head}_logloss"] = log_loss(y, p)
            metrics[f"{head}_ece"] = expected_calibration_error(y, p)
            metrics[f"baseline_{head}_auc"] = roc_auc(y, base)
            metrics[f"baseline_{head}_logloss"] = log_loss(y, base)
            heads[head], baselines[head] = (y, p), base
        if config.run_dir:
            # The latest evaluation's reliability and ROC curves; the engine logs <run>/figures to MLflow.
            save_ranking_figures(heads, Path(config.run_dir) / "figures", baselines=baselines,
                                 title=f"homefeed eval ({len(heads['click'][0])} rows)")
        return metrics

    def example_inputs(self, config: HomefeedConfig):
        batch = next(iter(data.ParquetStream(self.eval_files, 8, shuffle=False)))
        return model.batch_inputs(batch), list(model.INPUT_NAMES), list(model.OUTPUT_NAMES)


def ray_datasets(argv: list[str]) -> dict[str, Any]:
    """The Ray driver's side of ``--set input=ray_data``: ``TorchTrainer(datasets=...)`` for these trainer flags.

    Returns {} when the flags do not ask for Ray Data. Generates the synthetic shards first when no --data-dir
    is given (the driver's view of the files must be the workers': one machine, or shared storage). Pass
    ``ml.data.ray_data.data_config()`` as the trainer's ``dataset_config``.
    """
    config = parse_config(HomefeedConfig, list(argv), prog="homefeed", description=HomefeedConfig.__doc__)
    if config.input != "ray_data":
        return {}
    task = HomefeedTask()
    task.find_shards(config, True)
    return ray_data.datasets_for(task.train_files, seed=config.seed)


def main(argv: list[str] | None = None) -> int:
    task = HomefeedTask()
    args = list(sys.argv[1:] if argv is None else argv)
    return run(HomefeedConfig, task, args, prog="tools/bazel run //ml/homefeed:train --")


if __name__ == "__main__":
    sys.exit(main())
