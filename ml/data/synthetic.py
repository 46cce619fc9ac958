"""A learnable synthetic home-feed world written as deterministic Parquet shards (see ml.data.schema).

Why synthetic data has structure: a ranker or a retriever is only worth shipping if it beats item
popularity, so the generator plants signals that popularity cannot see (user-item affinity in latent
factors, short-term session intent visible only in the history, position bias, context effects) while
keeping a real per-item quality term so that the popularity baseline is itself better than chance.
Shared by ml/homefeed and ml/retrieval; imports no ML framework.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ml.data.schema import (
    ACTION_VIEW,
    LIST_COLUMNS,
    PAD_ID,
    SCHEMA,
    check_float,
    check_int,
)

__all__ = ["SyntheticConfig", "generate_shards", "shard_name"]

# Seed-sequence tags: every random stream starts with its own tag so no two streams can
# collide whatever the user's seed/epoch/stream numbers are.
_TAG_WORLD = 0x57_4F_52
_TAG_SPLIT = 0x53_50_4C

_GEN_CHUNK_ROWS = 8192  # bounds generator memory (rows x seq_len x latent_dim floats)
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world; frozen so a config can key caches and file metadata.

    Attributes:
        num_users: distinct users (ids 1..num_users).
        num_items: distinct items (ids 1..num_items); must be >= num_topics.
        context_cardinalities: one cardinality per context feature (default: hour of day,
            device, surface); ``num_categorical`` is its length.
        num_dense: dense features per row (>= 1). The first three are noisy upstream
            signals (retrieval similarity, item popularity, item quality); the rest are
            noisy projections of the user and item latent factors.
        seq_len: history length L per row.
        latent_dim: size of the hidden user/item factors.
        num_topics: interest clusters; items belong to one, users mix a few.
        zipf_exponent: popularity skew; item k-th most popular is shown ~ k**-zipf_exponent.
        popularity_mix: fraction of impressions whose candidate is drawn by global
            popularity alone (the rest follow the user's interests / session intent).
        position_bias: click logit drops by ``position_bias * log1p(position)``.
        context_effect: std of the per-value click-logit shift of each context feature.
        dense_noise: std of the noise added to every dense feature.
        label_noise: probability that a click label is flipped.
        num_positions: feed slots 0..num_positions-1.
        seed: world seed; splits draw rows from streams derived from it.
    """

    num_users: int = 5000
    num_items: int = 2000
    context_cardinalities: tuple[int, ...] = (24, 4, 6)
    num_dense: int = 8
    seq_len: int = 20
    latent_dim: int = 16
    num_topics: int = 20
    zipf_exponent: float = 1.1
    popularity_mix: float = 0.3
    position_bias: float = 0.5
    context_effect: float = 0.4
    dense_noise: float = 0.5
    label_noise: float = 0.02
    num_positions: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.context_cardinalities, list):
            object.__setattr__(self, "context_cardinalities", tuple(self.context_cardinalities))
        for name in ("num_users", "num_items", "num_dense", "seq_len", "latent_dim", "num_topics", "num_positions"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed, minimum=0)
        if not isinstance(self.context_cardinalities, tuple) or not self.context_cardinalities:
            raise ValueError(
                f"context_cardinalities must be a non-empty tuple of ints, got {self.context_cardinalities!r}; "
                "e.g. (24, 4, 6) for hour, device, surface"
            )
        for i, c in enumerate(self.context_cardinalities):
            check_int(f"context_cardinalities[{i}]", c, minimum=1)
        if self.num_items < self.num_topics:
            raise ValueError(
                f"num_items ({self.num_items}) must be >= num_topics ({self.num_topics}) so every topic has an item; "
                "raise num_items or lower num_topics"
            )
        check_float("zipf_exponent", self.zipf_exponent, 0.0, 5.0)
        check_float("popularity_mix", self.popularity_mix, 0.0, 1.0)
        check_float("position_bias", self.position_bias, 0.0, 10.0)
        check_float("context_effect", self.context_effect, 0.0, 10.0)
        check_float("dense_noise", self.dense_noise, 0.0, 100.0)
        check_float("label_noise", self.label_noise, 0.0, 0.5)

    @property
    def num_categorical(self) -> int:
        """Number of context features (length of ``context``)."""
        return len(self.context_cardinalities)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); inverse of ``SyntheticConfig(**d)``."""
        d = dataclasses.asdict(self)
        d["context_cardinalities"] = list(self.context_cardinalities)
        return d



# ----------------------------------------------------------------------------- world
@dataclass(frozen=True)
class _World:
    """Hidden ground truth shared by every split of one seed."""

    user_vec: np.ndarray  # (U+1, d) float32, row 0 unused
    user_topic_cdf: np.ndarray  # (U+1, T)
    item_vec: np.ndarray  # (I+1, d) float32
    item_topic: np.ndarray  # (I+1,) int64
    item_quality: np.ndarray  # (I+1,)
    item_save_quality: np.ndarray  # (I+1,)
    log_pop_z: np.ndarray  # (I+1,) standardised log popularity
    pop_cdf: np.ndarray  # (I,) cumulative popularity over ids 1..I
    topic_key: np.ndarray  # (I,) topic + within-topic cumulative popularity, sorted
    topic_items: np.ndarray  # (I,) item ids in topic_key order
    centroids: np.ndarray  # (T, d)
    save_mix: np.ndarray  # (d, d) rotation: saves follow another direction than clicks
    context_effects: tuple[np.ndarray, ...]
    dense_proj: np.ndarray  # (2d, max(D-3, 0))
    dense_scale: np.ndarray  # (max(D-3, 0),)


def _build_world(cfg: SyntheticConfig) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence([_TAG_WORLD, cfg.seed]))
    d, t_count, n_users, n_items = cfg.latent_dim, cfg.num_topics, cfg.num_users, cfg.num_items

    centroids = rng.standard_normal((t_count, d)) / math.sqrt(d)
    item_topic = rng.permutation(np.arange(n_items) % t_count)  # every topic non-empty
    item_vec = centroids[item_topic] + 0.5 * rng.standard_normal((n_items, d)) / math.sqrt(d)

    ranks = rng.permutation(n_items) + 1.0
    pop = ranks ** (-cfg.zipf_exponent)
    pop /= pop.sum()
    log_pop = np.log(pop)
    log_pop_z = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9)
    # Popular items are somewhat better on average, as in real feeds.
    item_quality = 0.45 * rng.standard_normal(n_items) + 0.2 * log_pop_z
    item_save_quality = 0.5 * rng.standard_normal(n_items)

    prefs = rng.dirichlet(np.full(t_count, 0.25), size=n_users)
    user_vec = prefs @ centroids / np.sqrt((prefs**2).sum(1, keepdims=True))
    user_vec = user_vec + 0.3 * rng.standard_normal((n_users, d)) / math.sqrt(d)
    cdf = np.cumsum(prefs, axis=1)
    cdf[:, -1] = 1.0

    order = np.lexsort((np.arange(n_items), item_topic))
    sorted_topic = item_topic[order]
    sorted_pop = pop[order]
    within = np.zeros(n_items)
    for t in range(t_count):
        sel = sorted_topic == t
        c = np.cumsum(sorted_pop[sel])
        c /= c[-1]
        c[-1] = 1.0
        within[sel] = c
    topic_key = sorted_topic + within
    pop_cdf = np.cumsum(pop)
    pop_cdf[-1] = 1.0

    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    context_effects = tuple(cfg.context_effect * rng.standard_normal(c) for c in cfg.context_cardinalities)
    n_proj = max(cfg.num_dense - 3, 0)
    dense_proj = rng.standard_normal((2 * d, n_proj))
    dense_scale = 1.0 / np.sqrt(np.maximum((dense_proj**2).sum(0) / d, 1e-9))

    def pad_rows(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((1,) + a.shape[1:], dtype=a.dtype), a])

    return _World(
        user_vec=pad_rows(user_vec).astype(np.float32),
        user_topic_cdf=pad_rows(cdf),
        item_vec=pad_rows(item_vec).astype(np.float32),
        item_topic=pad_rows(item_topic.astype(np.int64)),
        item_quality=pad_rows(item_quality),
        item_save_quality=pad_rows(item_save_quality),
        log_pop_z=pad_rows(log_pop_z),
        pop_cdf=pop_cdf,
        topic_key=topic_key,
        topic_items=(order + 1).astype(np.int64),
        centroids=centroids.astype(np.float32),
        save_mix=q.astype(np.float32),
        context_effects=context_effects,
        dense_proj=dense_proj.astype(np.float32),
        dense_scale=dense_scale.astype(np.float32),
    )


def _sample_topics(cdf_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(cdf_rows.shape[:-1])
    return np.minimum((cdf_rows <= u[..., None]).sum(-1), cdf_rows.shape[-1] - 1)


def _sample_in_topic(world: _World, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    key = topics + rng.random(topics.shape)
    idx = np.searchsorted(world.topic_key, key, side="right")
    return world.topic_items[np.minimum(idx, len(world.topic_items) - 1)]


def _sample_popular(world: _World, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    idx = np.searchsorted(world.pop_cdf, rng.random(shape), side="right")
    return np.minimum(idx, len(world.pop_cdf) - 1).astype(np.int64) + 1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _generate_chunk(world: _World, cfg: SyntheticConfig, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Vectorised draw of n impressions (all numpy, no Python loop over rows)."""
    L, P = cfg.seq_len, cfg.num_positions
    users = rng.integers(1, cfg.num_users + 1, size=n)
    ucdf = world.user_topic_cdf[users]
    session_topic = _sample_topics(ucdf, rng)

    # --- history: oldest first, the most recent `burst` slots follow the session intent.
    lengths = np.where(rng.random(n) < 0.08, 0, rng.integers(1, L + 1, size=n))
    burst = np.minimum(1 + rng.poisson(2.5, size=n), lengths)
    recency = np.arange(L - 1, -1, -1)[None, :]  # 0 = most recent slot (right end)
    valid = recency < lengths[:, None]
    in_session = recency < burst[:, None]
    hist_topics = np.where(in_session, session_topic[:, None], _sample_topics(np.repeat(ucdf[:, None, :], L, 1), rng))
    hist_items = np.where(
        rng.random((n, L)) < 0.15, _sample_popular(world, (n, L), rng), _sample_in_topic(world, hist_topics, rng)
    )
    hist_items = np.where(valid, hist_items, PAD_ID)
    u_vec = world.user_vec[users]
    hist_aff = np.einsum("nd,nld->nl", u_vec, world.item_vec[hist_items])
    p_hist_click = _sigmoid(-1.2 + 2.5 * hist_aff + 1.0 * in_session)
    hist_click = rng.random((n, L)) < p_hist_click
    hist_save = hist_click & (rng.random((n, L)) < 0.3)
    hist_actions = np.where(valid, ACTION_VIEW + hist_click + hist_save, 0).astype(np.int64)
    step = np.where(in_session, rng.exponential(0.2, (n, L)), rng.exponential(10.0, (n, L)))
    # step is indexed left->right but cumulates from the right (most recent) end.
    gaps = np.cumsum(step[:, ::-1], axis=1)[:, ::-1]
    hist_gaps = np.where(valid, gaps, 0.0).astype(np.float32)

    # --- candidate: global popularity, session intent, or long-term interests.
    mode = rng.random(n)
    cand_topic = np.where(mode < 0.5, session_topic, _sample_topics(ucdf, rng))
    items = np.where(
        mode < cfg.popularity_mix, _sample_popular(world, (n,), rng), _sample_in_topic(world, cand_topic, rng)
    )
    positions = rng.integers(0, P, size=n)
    context = np.stack([rng.integers(0, c, size=n) for c in cfg.context_cardinalities], axis=1).astype(np.int64)

    i_vec = world.item_vec[items]
    affinity = (u_vec * i_vec).sum(1)
    intent = (world.centroids[session_topic] * i_vec).sum(1)
    has_session = lengths > 0
    ctx_shift = sum(eff[context[:, j]] for j, eff in enumerate(world.context_effects))
    click_logit = (
        -3.0
        + 2.2 * affinity
        + 1.8 * intent * has_session
        + world.item_quality[items]
        - cfg.position_bias * np.log1p(positions)
        + ctx_shift
    )
    p_click = _sigmoid(click_logit)
    click = rng.random(n) < p_click
    click = np.where(rng.random(n) < cfg.label_noise, ~click, click)
    save_aff = (u_vec * (i_vec @ world.save_mix)).sum(1)
    save_logit = -0.9 + 3.0 * save_aff + world.item_save_quality[items]
    save = click & (rng.random(n) < _sigmoid(save_logit))

    # --- dense: noisy upstream signals correlated with the hidden factors.
    noise = cfg.dense_noise * rng.standard_normal((n, cfg.num_dense))
    base = [affinity * 2.0, world.log_pop_z[items], world.item_quality[items] * 2.0]
    dense = np.zeros((n, cfg.num_dense), dtype=np.float64)
    for j in range(min(3, cfg.num_dense)):
        dense[:, j] = base[j]
    if cfg.num_dense > 3:
        factors = np.concatenate([u_vec, i_vec], axis=1)
        dense[:, 3:] = (factors @ world.dense_proj) * world.dense_scale
    dense = (dense + noise).astype(np.float32)

    return {
        "user_id": users.astype(np.int64),
        "item_id": items.astype(np.int64),
        "position": positions.astype(np.int64),
        "context": context,
        "dense": dense,
        "hist_items": hist_items.astype(np.int64),
        "hist_actions": hist_actions,
        "hist_gaps": hist_gaps,
        "click": click.astype(np.float32),
        "save": save.astype(np.float32),
        "_p_click": p_click,  # ground truth, not written; lets tests bound achievable AUC
    }


def _list_array(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    n, width = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=arrow_type.value_type), type=arrow_type)


def _to_table(cols: dict[str, np.ndarray], cfg: SyntheticConfig, split: str) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        v = cols[field.name]
        arrays.append(_list_array(v, field.type) if field.name in LIST_COLUMNS else pa.array(v, type=field.type))
    meta = {
        b"homefeed.synthetic_config": json.dumps(cfg.to_dict(), sort_keys=True).encode(),
        b"homefeed.split": split.encode(),
    }
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(meta))


def shard_name(split: str, index: int, num_shards: int) -> str:
    """File name of one shard, e.g. ``train-00000-of-00004.parquet``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.parquet"


def generate_shards(
    out_dir: str | os.PathLike[str],
    cfg: SyntheticConfig,
    num_samples: int,
    num_shards: int,
    split: str = "train",
    rows_per_group: int = 16384,
) -> list[Path]:
    """Write ``num_samples`` synthetic rows as ``num_shards`` Parquet files; return their paths.

    Deterministic: the same (cfg, num_samples, num_shards, split) always gives
    byte-identical files, because every shard draws from its own seed stream
    (seed, split, shard) and the writer options are pinned. All splits share one
    hidden world (users, items, effects) built from ``cfg.seed`` alone, so a model
    trained on "train" is evaluated on the same population in "eval".
    """
    if not isinstance(cfg, SyntheticConfig):
        raise ValueError(f"cfg must be a SyntheticConfig, got {type(cfg).__name__}")
    check_int("num_samples", num_samples, minimum=1)
    check_int("num_shards", num_shards, minimum=1)
    check_int("rows_per_group", rows_per_group, minimum=1)
    if num_shards > num_samples:
        raise ValueError(f"num_shards ({num_shards}) must be <= num_samples ({num_samples}) so no shard is empty")
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ValueError(f"split must be a non-empty name of letters, digits or '_', got {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = _build_world(cfg)
    split_code = zlib.crc32(split.encode())
    paths: list[Path] = []
    for shard in range(num_shards):
        lo = shard * num_samples // num_shards
        hi = (shard + 1) * num_samples // num_shards
        rng = np.random.default_rng(np.random.SeedSequence([_TAG_SPLIT, cfg.seed, split_code, shard]))
        parts = [_generate_chunk(world, cfg, rng, min(_GEN_CHUNK_ROWS, hi - s)) for s in range(lo, hi, _GEN_CHUNK_ROWS)]
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        cols["row_id"] = np.arange(lo, hi, dtype=np.int64)
        table = _to_table(cols, cfg, split)
        path = out / shard_name(split, shard, num_shards)
        tmp = out / f".{path.name}.tmp"
        # Pinned writer options: byte-stable output for a given pyarrow version.
        pq.write_table(
            table,
            tmp,
            row_group_size=rows_per_group,
            compression="zstd",
            compression_level=3,
            use_dictionary=False,
            write_statistics=True,
            version="2.6",
            data_page_version="1.0",
            store_schema=True,
            use_compliant_nested_type=True,
        )
        os.replace(tmp, path)
        paths.append(path)
    return paths

