"""HomefeedRanker: a DCN-v2 ranker with a transformer over the user's recent actions.

Why this architecture: engagement depends on explicit feature crosses (user x item x
position x context), which the DCN-v2 cross network models cheaply, and on short-term
intent, which only the ordered action history reveals, hence a small transformer whose
pooled output (and its product with the candidate item) joins the crossed features.
Inputs are positional tensors only, so the module traces, scripts, exports with a
dynamic batch dimension and runs under CPU bf16 autocast without adapters.

Id conventions (shared with ``data.py``): item id 0 and action type 0 are padding;
ids outside their table (unseen users/items, bad context values) are mapped to a
reserved "unknown" row instead of crashing serving.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "HomefeedModelConfig",
    "HomefeedRanker",
    "CrossNetwork",
    "batch_inputs",
    "multitask_loss",
    "example_inputs",
    "dynamic_batch_shapes",
]

INPUT_NAMES: tuple[str, ...] = (
    "user_id",
    "item_id",
    "position",
    "context",
    "dense",
    "hist_items",
    "hist_actions",
    "hist_gaps",
)
OUTPUT_NAMES: tuple[str, ...] = ("click_logit", "save_logit")


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"HomefeedModelConfig.{name} must be an int >= {minimum}, got {value!r}")


@dataclass
class HomefeedModelConfig:
    """Sizes of the ranker. Vocabulary sizes exclude the reserved id 0 (see module doc).

    ``data.model_config_kwargs(SyntheticConfig)`` returns the data-dependent fields; the
    rest are capacity knobs with defaults sized to train quickly on a 2-core CPU.
    ``dropout`` applies to the deep MLP; ``seq_dropout`` to the transformer and defaults
    to 0 because on CPU the dropout masks cost more than the whole attention while short
    histories gain little from it. ``seq_ff_mult`` sizes the transformer feed-forward
    (times ``embed_dim``; PyTorch's default of 2048 would dominate the step time).
    """

    num_users: int
    num_items: int
    context_cardinalities: tuple[int, ...]
    num_dense: int
    num_positions: int
    seq_len: int
    embed_dim: int = 32
    seq_layers: int = 2
    seq_heads: int = 4
    cross_layers: int = 3
    mlp_dims: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    num_action_types: int = 4
    seq_ff_mult: int = 2
    seq_dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.context_cardinalities, list):
            self.context_cardinalities = tuple(self.context_cardinalities)
        if isinstance(self.mlp_dims, list):
            self.mlp_dims = tuple(self.mlp_dims)
        for name in ("num_users", "num_items", "num_dense", "num_positions", "seq_len", "embed_dim"):
            _positive_int(name, getattr(self, name))
        _positive_int("seq_layers", self.seq_layers)
        _positive_int("seq_heads", self.seq_heads)
        _positive_int("cross_layers", self.cross_layers, minimum=0)
        _positive_int("seq_ff_mult", self.seq_ff_mult)
        _positive_int("num_action_types", self.num_action_types, minimum=2)
        if not isinstance(self.context_cardinalities, tuple) or not self.context_cardinalities:
            raise ValueError(
                "HomefeedModelConfig.context_cardinalities must be a non-empty tuple of ints, "
                f"got {self.context_cardinalities!r}"
            )
        for i, c in enumerate(self.context_cardinalities):
            _positive_int(f"context_cardinalities[{i}]", c)
        if not isinstance(self.mlp_dims, tuple) or not self.mlp_dims:
            raise ValueError(f"HomefeedModelConfig.mlp_dims must be a non-empty tuple of ints, got {self.mlp_dims!r}")
        for i, d in enumerate(self.mlp_dims):
            _positive_int(f"mlp_dims[{i}]", d)
        if self.embed_dim % self.seq_heads:
            raise ValueError(
                f"HomefeedModelConfig.embed_dim ({self.embed_dim}) must be divisible by seq_heads ({self.seq_heads}); "
                "change one of them"
            )
        for name in ("dropout", "seq_dropout"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"HomefeedModelConfig.{name} must be a float in [0, 1), got {p!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict for checkpoints; ``from_dict`` restores it."""
        d = dataclasses.asdict(self)
        d["context_cardinalities"] = list(self.context_cardinalities)
        d["mlp_dims"] = list(self.mlp_dims)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HomefeedModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown HomefeedModelConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**dict(d))

    @property
    def num_features(self) -> int:
        """Feature slots entering the cross net: dense, user, item, position, contexts, seq, item*seq."""
        return 6 + len(self.context_cardinalities)


def _gelu(x: Tensor) -> Tensor:
    """GELU as a plain function: nn.TransformerEncoderLayer only takes its fused inference
    fast path for the built-in activations, and that path makes eval/no_grad graphs differ
    from training ones (jit.trace's check fails). One code path keeps eager, trace and
    export numerically identical."""
    return F.gelu(x)


class CrossNetwork(nn.Module):
    """DCN-v2 full-rank cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l.

    Each layer raises the polynomial degree of the feature interactions by one while the
    residual keeps lower-degree terms, which an MLP alone learns only inefficiently.
    """

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        for layer in self.layers:
            # Start near identity (small crosses) so the early loss is dominated by the MLP path.
            nn.init.normal_(layer.weight, std=0.1 / math.sqrt(dim))
            nn.init.zeros_(layer.bias)

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class HomefeedRanker(nn.Module):
    """Predicts click and save logits for (user, candidate item, context) rows.

    Features (each ``embed_dim`` wide) are stacked: projected+LayerNorm'd dense
    features, user/item/position/context embeddings, the CLS output of a transformer over
    the history, and item * history (a cheap target-aware signal). The flat vector goes
    through a cross network and an MLP in parallel; two linear heads read both.
    """

    def __init__(self, config: HomefeedModelConfig) -> None:
        super().__init__()
        if not isinstance(config, HomefeedModelConfig):
            raise ValueError(f"config must be a HomefeedModelConfig, got {type(config).__name__}")
        self.config = config
        d = config.embed_dim
        # +1 rows: id 0 (padding / unknown) plus 1..N.
        self.user_embedding = nn.Embedding(config.num_users + 1, d)
        self.item_embedding = nn.Embedding(config.num_items + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(config.num_positions, d)
        # Context values are 0..c-1; row c is "unknown" for out-of-range values.
        self.context_embeddings = nn.ModuleList(nn.Embedding(c + 1, d) for c in config.context_cardinalities)
        # LayerNorm (not BatchNorm): no running stats to sync under DDP or to freeze for export.
        self.dense_proj = nn.Linear(config.num_dense, d)
        self.dense_norm = nn.LayerNorm(d)

        self.action_embedding = nn.Embedding(config.num_action_types, d, padding_idx=0)
        self.gap_proj = nn.Linear(1, d)
        self.seq_position = nn.Embedding(config.seq_len + 1, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=config.seq_heads,
            dim_feedforward=config.seq_ff_mult * d,
            dropout=config.seq_dropout,
            activation=_gelu,
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor=False keeps one dense code path for training, trace and export.
        self.seq_encoder = nn.TransformerEncoder(
            layer, num_layers=config.seq_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )

        in_dim = config.num_features * d
        self.cross = CrossNetwork(in_dim, config.cross_layers)
        dims = (in_dim, *config.mlp_dims)
        mlp: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mlp += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(config.dropout)]
        self.deep = nn.Sequential(*mlp)
        self.click_head = nn.Linear(in_dim + config.mlp_dims[-1], 1)
        self.save_head = nn.Linear(in_dim + config.mlp_dims[-1], 1)
        nn.init.normal_(self.cls_token, std=0.02)
        for emb in [self.user_embedding, self.item_embedding, self.position_embedding, self.action_embedding,
                    self.seq_position, *self.context_embeddings]:
            nn.init.normal_(emb.weight, std=0.05)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            self.action_embedding.weight[0].zero_()

    @staticmethod
    def _known(ids: Tensor, size: int, unknown: int) -> Tensor:
        """Map ids outside [0, size) to ``unknown`` (export-friendly, no data-dependent branch)."""
        bad = (ids < 0) | (ids >= size)
        return torch.where(bad, torch.full_like(ids, unknown), ids)

    def _check_widths(self, context: Tensor, dense: Tensor, *hist: Tensor) -> None:
        """Fail with a readable message on data/model config mismatch (static dims only, so
        this is free under trace and export)."""
        if torch.jit.is_tracing():
            return  # under tracing shapes are symbolic; the exported signature pins the widths instead
        cfg = self.config
        want = {"context": len(cfg.context_cardinalities), "dense": cfg.num_dense}
        got = {"context": context.shape[-1], "dense": dense.shape[-1]}
        for name, t in zip(("hist_items", "hist_actions", "hist_gaps"), hist, strict=True):
            want[name], got[name] = cfg.seq_len, t.shape[-1]
        for name in want:
            if got[name] != want[name]:
                raise ValueError(
                    f"{name} has width {got[name]} but the model was built for {want[name]}; "
                    "build HomefeedModelConfig from the same data config (data.model_config_kwargs)"
                )

    def encode_history(self, hist_items: Tensor, hist_actions: Tensor, hist_gaps: Tensor) -> Tensor:
        """Pooled [B, d] summary of the recent actions (CLS output; all-padding rows stay finite)."""
        cfg = self.config
        items = self._known(hist_items, cfg.num_items + 1, 0)
        actions = self._known(hist_actions, cfg.num_action_types, 0)
        pad = items == 0
        gaps = torch.log1p(hist_gaps.to(self.cls_token.dtype).clamp(min=0.0)).unsqueeze(-1)
        tokens = self.item_embedding(items) + self.action_embedding(actions) + self.gap_proj(gaps)
        tokens = tokens.masked_fill(pad.unsqueeze(-1), 0.0)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = torch.cat([cls, tokens], dim=1)
        x = x + self.seq_position.weight[: x.shape[1]].unsqueeze(0)
        # CLS is never masked, so every row attends to at least one key: no NaN from softmax.
        mask = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        out = self.seq_encoder(x, src_key_padding_mask=mask)
        return out[:, 0]

    def forward(
        self,
        user_id: Tensor,
        item_id: Tensor,
        position: Tensor,
        context: Tensor,
        dense: Tensor,
        hist_items: Tensor,
        hist_actions: Tensor,
        hist_gaps: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Return (click_logit [B], save_logit [B]); see INPUT_NAMES for the argument order."""
        cfg = self.config
        self._check_widths(context, dense, hist_items, hist_actions, hist_gaps)
        user = self.user_embedding(self._known(user_id, cfg.num_users + 1, 0))
        item = self.item_embedding(self._known(item_id, cfg.num_items + 1, 0))
        pos = self.position_embedding(position.clamp(0, cfg.num_positions - 1))
        dense_x = self.dense_norm(self.dense_proj(dense.to(self.dense_proj.weight.dtype)))
        seq = self.encode_history(hist_items, hist_actions, hist_gaps)
        feats = [dense_x, user, item, pos]
        for j, emb in enumerate(self.context_embeddings):
            c = cfg.context_cardinalities[j]
            feats.append(emb(self._known(context[:, j], c, c)))
        feats += [seq, item * seq]
        dtype = dense_x.dtype  # under autocast embeddings stay fp32 while Linear outputs may not
        x0 = torch.cat([f.to(dtype) for f in feats], dim=1)
        h = torch.cat([self.cross(x0), self.deep(x0)], dim=1)
        return self.click_head(h).squeeze(-1), self.save_head(h).squeeze(-1)


def batch_inputs(batch: Mapping[str, Tensor]) -> tuple[Tensor, ...]:
    """Model inputs from a loader batch, in INPUT_NAMES order (labels and row_id dropped)."""
    missing = [n for n in INPUT_NAMES if n not in batch]
    if missing:
        raise ValueError(f"batch is missing model input(s) {missing}; expected keys {list(INPUT_NAMES)}")
    return tuple(batch[n] for n in INPUT_NAMES)


def multitask_loss(
    click_logit: Tensor, save_logit: Tensor, click: Tensor, save: Tensor, save_weight: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """click BCE + save_weight * save BCE, computed in fp32 (stable under bf16 autocast).

    Returns the scalar loss and ``{"click_loss", "save_loss"}`` as floats for logging.
    """
    if isinstance(save_weight, bool) or not isinstance(save_weight, (int, float)) or not save_weight >= 0:
        raise ValueError(f"save_weight must be a non-negative number, got {save_weight!r}")
    for name, logit, label in (("click", click_logit, click), ("save", save_logit, save)):
        if logit.shape != label.shape:
            raise ValueError(f"{name} logits have shape {tuple(logit.shape)} but labels {tuple(label.shape)}")
    click_loss = F.binary_cross_entropy_with_logits(click_logit.float(), click.float())
    save_loss = F.binary_cross_entropy_with_logits(save_logit.float(), save.float())
    loss = click_loss + save_weight * save_loss
    return loss, {"click_loss": float(click_loss.detach()), "save_loss": float(save_loss.detach())}


def example_inputs(
    config: HomefeedModelConfig, batch_size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    """Random but valid inputs (some histories fully padded): for tracing, export and tests."""
    _positive_int("batch_size", batch_size)
    g = generator
    b, L = batch_size, config.seq_len
    lengths = torch.randint(0, L + 1, (b, 1), generator=g)
    valid = torch.arange(L).unsqueeze(0) >= (L - lengths)  # left padding
    hist_items = torch.randint(1, config.num_items + 1, (b, L), generator=g) * valid
    hist_actions = torch.randint(1, config.num_action_types, (b, L), generator=g) * valid
    hist_gaps = torch.rand(b, L, generator=g) * 48.0 * valid
    context = torch.stack([torch.randint(0, c, (b,), generator=g) for c in config.context_cardinalities], dim=1)
    return (
        torch.randint(1, config.num_users + 1, (b,), generator=g),
        torch.randint(1, config.num_items + 1, (b,), generator=g),
        torch.randint(0, config.num_positions, (b,), generator=g),
        context,
        torch.randn(b, config.num_dense, generator=g),
        hist_items,
        hist_actions,
        hist_gaps,
    )


def dynamic_batch_shapes(max_batch: int = 65536) -> dict[str, dict[int, Any]]:
    """``dynamic_shapes`` for ``torch.export.export`` making dim 0 of every input dynamic."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return {name: {0: batch} for name in INPUT_NAMES}
