"""__project__'s model: embeddings of the categorical fields + dense features into an MLP, one click logit.

Native PyTorch: imports nothing from the engine, so it can be read, tested and reused on its own. The served
signature is (cat, dense) -> logit; the trainer exports exactly that forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "ClickModel", "ModelConfig"]

INPUT_NAMES = ("cat", "dense")
OUTPUT_NAMES = ("logit",)


@dataclass(frozen=True)
class ModelConfig:
    cardinalities: tuple[int, ...]
    num_dense: int
    embed_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0


class ClickModel(nn.Module):
    """P(click) from categorical ids and dense features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, config.embed_dim) for n in config.cardinalities)
        layers: list[nn.Module] = []
        width = config.embed_dim * len(config.cardinalities) + config.num_dense
        for out in config.hidden:
            layers += [nn.Linear(width, out), nn.ReLU(), nn.Dropout(config.dropout)]
            width = out
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        embedded = [table(cat[:, i]) for i, table in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*embedded, dense], dim=1)).squeeze(1)
