"""Home-feed engagement data: a learnable synthetic world and a sharded Parquet stream.

The training code only ever reads Parquet shards with the columns below, so real logs
plug in by writing shards with this schema and pointing :class:`ParquetStream` at them
(:func:`validate_schema` says which columns are missing or mistyped).

==============  ===============  ==========================================================
column          type             meaning
==============  ===============  ==========================================================
row_id          int64            unique per row within a split; optional for real data,
                                 used to prove that sharding neither loses nor repeats rows
user_id         int64            user, 1..num_users (0 = unknown user)
item_id         int64            candidate item shown, 1..num_items (0 = padding/unknown)
position        int64            slot in the feed, 0 = top (0..num_positions-1)
context         list<int64>      one value per context feature (e.g. hour, device,
                                 surface), each in [0, cardinality); fixed length C
dense           list<float32>    dense features; fixed length D
hist_items      list<int64>      the user's recent items, oldest first, left-padded with 0;
                                 fixed length L (seq_len)
hist_actions    list<int64>      action per history slot: 0 pad, 1 view, 2 click, 3 save
hist_gaps       list<float32>    hours between that action and this impression (0 on pads)
click           float32          label, 0 or 1
save            float32          label, 0 or 1 (a save implies a click)
==============  ===============  ==========================================================

Why synthetic data has structure: a ranker is only worth shipping if it beats item
popularity, so the generator plants signals that popularity cannot see (user-item
affinity in latent factors, short-term session intent visible only in the history,
position bias, context effects) while keeping a real per-item quality term so that the
popularity baseline is itself better than chance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

__all__ = [
    "SCHEMA",
    "REQUIRED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "LIST_COLUMNS",
    "LABEL_COLUMNS",
    "PAD_ID",
    "ACTION_VIEW",
    "ACTION_CLICK",
    "ACTION_SAVE",
    "NUM_ACTION_TYPES",
    "SyntheticConfig",
    "model_config_kwargs",
    "validate_schema",
    "generate_shards",
    "shard_name",
    "ParquetStream",
    "num_rows",
    "batches_per_epoch",
    "stream_row_range",
]

PAD_ID = 0
ACTION_VIEW = 1
ACTION_CLICK = 2
ACTION_SAVE = 3
NUM_ACTION_TYPES = 4  # including the padding action 0

_COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("row_id", pa.int64(), "unique row number within a split (optional for real data)"),
    ("user_id", pa.int64(), "user id, 1..num_users; 0 = unknown"),
    ("item_id", pa.int64(), "candidate item id, 1..num_items; 0 = padding/unknown"),
    ("position", pa.int64(), "feed slot, 0 = top"),
    ("context", pa.list_(pa.int64()), "context feature values, fixed length C, each in [0, cardinality)"),
    ("dense", pa.list_(pa.float32()), "dense features, fixed length D"),
    ("hist_items", pa.list_(pa.int64()), "recent item ids, oldest first, left-padded with 0, length L"),
    ("hist_actions", pa.list_(pa.int64()), "action per history slot: 0 pad, 1 view, 2 click, 3 save"),
    ("hist_gaps", pa.list_(pa.float32()), "hours from that action to this impression; 0 on padding"),
    ("click", pa.float32(), "label: 1.0 if the impression was clicked"),
    ("save", pa.float32(), "label: 1.0 if the item was saved (implies click)"),
)
SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, typ, nullable=False, metadata={"doc": doc}) for name, typ, doc in _COLUMNS]
)
"""Column-by-column contract of every shard; see the module docstring for meanings."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("row_id",)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(n for n in SCHEMA.names if n not in OPTIONAL_COLUMNS)
LIST_COLUMNS: tuple[str, ...] = ("context", "dense", "hist_items", "hist_actions", "hist_gaps")
LABEL_COLUMNS: tuple[str, ...] = ("click", "save")

# Seed-sequence tags: every random stream starts with its own tag so no two streams can
# collide whatever the user's seed/epoch/stream numbers are.
_TAG_WORLD = 0x57_4F_52
_TAG_SPLIT = 0x53_50_4C
_TAG_FILES = 0x46_49_4C
_TAG_BUFFER = 0x42_55_46

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
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if not isinstance(self.context_cardinalities, tuple) or not self.context_cardinalities:
            raise ValueError(
                f"context_cardinalities must be a non-empty tuple of ints, got {self.context_cardinalities!r}; "
                "e.g. (24, 4, 6) for hour, device, surface"
            )
        for i, c in enumerate(self.context_cardinalities):
            _check_int(f"context_cardinalities[{i}]", c, minimum=1)
        if self.num_items < self.num_topics:
            raise ValueError(
                f"num_items ({self.num_items}) must be >= num_topics ({self.num_topics}) so every topic has an item; "
                "raise num_items or lower num_topics"
            )
        _check_float("zipf_exponent", self.zipf_exponent, 0.0, 5.0)
        _check_float("popularity_mix", self.popularity_mix, 0.0, 1.0)
        _check_float("position_bias", self.position_bias, 0.0, 10.0)
        _check_float("context_effect", self.context_effect, 0.0, 10.0)
        _check_float("dense_noise", self.dense_noise, 0.0, 100.0)
        _check_float("label_noise", self.label_noise, 0.0, 0.5)

    @property
    def num_categorical(self) -> int:
        """Number of context features (length of ``context``)."""
        return len(self.context_cardinalities)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists); inverse of ``SyntheticConfig(**d)``."""
        d = dataclasses.asdict(self)
        d["context_cardinalities"] = list(self.context_cardinalities)
        return d


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    if not (low <= float(value) <= high) or math.isnan(float(value)):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def model_config_kwargs(cfg: SyntheticConfig) -> dict[str, Any]:
    """Sizes a ``HomefeedModelConfig`` needs, so model.py never has to import this module."""
    if not isinstance(cfg, SyntheticConfig):
        raise ValueError(f"model_config_kwargs expects a SyntheticConfig, got {type(cfg).__name__}")
    return {
        "num_users": cfg.num_users,
        "num_items": cfg.num_items,
        "context_cardinalities": tuple(cfg.context_cardinalities),
        "num_dense": cfg.num_dense,
        "num_positions": cfg.num_positions,
        "seq_len": cfg.seq_len,
        "num_action_types": NUM_ACTION_TYPES,
    }


# ----------------------------------------------------------------------------- schema
def _value_type(t: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


def validate_schema(schema: pa.Schema, *, where: str = "schema") -> None:
    """Raise ValueError naming every missing or mistyped column.

    List columns may be list, large_list or fixed_size_list (Spark and other writers
    differ) as long as the element type matches; ``row_id`` is optional.
    """
    if not isinstance(schema, pa.Schema):
        raise ValueError(f"{where}: expected a pyarrow.Schema, got {type(schema).__name__}")
    problems: list[str] = []
    for field in SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            if field.name not in OPTIONAL_COLUMNS:
                problems.append(f"missing column '{field.name}' ({field.type})")
            continue
        got = schema.field(idx).type
        want_value = _value_type(field.type)
        if want_value is not None:
            ok = _value_type(got) == want_value
        else:
            ok = got == field.type
        if not ok:
            problems.append(f"column '{field.name}' has type {got}, expected {field.type}")
    if problems:
        raise ValueError(
            f"{where} does not match the homefeed schema: " + "; ".join(problems)
            + ". Write shards with data.SCHEMA (cast the columns to these types)."
        )


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
    _check_int("num_samples", num_samples, minimum=1)
    _check_int("num_shards", num_shards, minimum=1)
    _check_int("rows_per_group", rows_per_group, minimum=1)
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


# ----------------------------------------------------------------------------- streaming
def _as_paths(files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("files is empty: pass at least one Parquet shard")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"Parquet shard(s) not found: {missing}; check the path or generate them first")
    return paths


def _row_group_sizes(path: Path) -> list[int]:
    md = pq.ParquetFile(path).metadata
    return [md.row_group(i).num_rows for i in range(md.num_row_groups)]


def num_rows(files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> int:
    """Total rows over ``files``, from Parquet footers only (no data is read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in _as_paths(files))


def stream_row_range(total_rows: int, stream: int, num_streams: int) -> tuple[int, int]:
    """[start, stop) of the epoch's global row sequence owned by one stream.

    Contiguous, balanced (sizes differ by at most one) and disjoint, so the streams
    together cover every row exactly once and each reads only ~1/num_streams of the data.
    """
    if num_streams < 1 or not 0 <= stream < num_streams:
        raise ValueError(f"stream must be in [0, num_streams={num_streams}), got {stream}")
    return stream * total_rows // num_streams, (stream + 1) * total_rows // num_streams


def _count_batches(rows: int, batch_size: int, drop_last: bool) -> int:
    return rows // batch_size if drop_last else -(-rows // batch_size)


def batches_per_epoch(
    files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    batch_size: int,
    world_size: int = 1,
    drop_last: bool = False,
    *,
    num_workers: int = 1,
) -> int:
    """Batches one rank gets per epoch; the minimum over ranks, so DDP steps stay in lockstep.

    Ranks own row counts that differ by at most one, so with ``drop_last=False`` one rank
    may hold a final extra partial batch; stepping exactly this many times on every rank
    keeps collectives matched (at worst that partial batch goes unused). ``num_workers``
    is the DataLoader's (0 counts as 1): every worker is its own stream with its own
    last partial batch.
    """
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("world_size", world_size, minimum=1)
    _check_int("num_workers", num_workers, minimum=0)
    nw = max(num_workers, 1)
    total = num_rows(files)
    per_rank = []
    for rank in range(world_size):
        count = 0
        for w in range(nw):
            lo, hi = stream_row_range(total, rank * nw + w, world_size * nw)
            count += _count_batches(hi - lo, batch_size, drop_last)
        per_rank.append(count)
    return min(per_rank)


Batch = dict[str, np.ndarray]


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(b: Batch, idx: np.ndarray | slice) -> Batch:
    return {k: v[idx] for k, v in b.items()}


def _rows(b: Batch) -> int:
    return len(next(iter(b.values())))


class ParquetStream(IterableDataset):
    """Streams already-collated batches from Parquet shards, exactly once per row per epoch.

    Why this shape: DDP ranks and DataLoader workers must see disjoint data without a
    coordinator, and a resumed job must land on the same sample it stopped at. So each
    epoch defines one global row order (file order shuffled by (seed, epoch)); that
    sequence is cut into ``world_size * num_workers`` contiguous ranges (stream =
    rank * num_workers + worker_id); each stream reads only its range, row group by row
    group, and shuffles it through a bounded buffer seeded by (seed, epoch, stream).
    Everything is a pure function of (files, seed, epoch, stream), so ``skip_batches``
    can replay a stream's first n batches without yielding them.

    Use with ``DataLoader(ds, batch_size=None, num_workers=k)``. ``set_epoch`` must be
    called before the DataLoader iterator is created (workers copy the dataset then;
    avoid ``persistent_workers=True``). Yields ``dict[str, Tensor]`` with the SCHEMA
    columns (``row_id`` only when the shards have it), list columns as 2-D tensors.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        skip_batches: int = 0,
        shuffle_buffer: int = 16384,
        read_rows: int = 4096,
    ) -> None:
        super().__init__()
        self.files = _as_paths(files)
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("world_size", world_size, minimum=1)
        _check_int("rank", rank, minimum=0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
        _check_int("seed", seed, minimum=0)
        _check_int("epoch", epoch, minimum=0)
        _check_int("skip_batches", skip_batches, minimum=0)
        _check_int("shuffle_buffer", shuffle_buffer, minimum=1)
        _check_int("read_rows", read_rows, minimum=1)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.drop_last = bool(drop_last)
        self.skip_batches = int(skip_batches)
        self.shuffle_buffer = int(shuffle_buffer)
        self.read_rows = int(read_rows)
        has_row_id = []
        for p in self.files:
            schema = pq.read_schema(p)
            validate_schema(schema, where=f"Parquet shard {p}")
            has_row_id.append("row_id" in schema.names)
        # Only carry row_id when every shard has it, so batch keys never change mid-epoch.
        self.columns: tuple[str, ...] = tuple(
            n for n in SCHEMA.names if n in REQUIRED_COLUMNS or (n == "row_id" and all(has_row_id))
        )
        self._group_sizes = [_row_group_sizes(p) for p in self.files]
        self.total_rows = sum(sum(g) for g in self._group_sizes)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose file order and shuffle are produced next."""
        _check_int("epoch", epoch, minimum=0)
        self.epoch = int(epoch)

    def file_order(self, epoch: int | None = None) -> list[int]:
        """Indices into ``files`` in the order the epoch reads them."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(len(self.files)))
        rng = np.random.default_rng(np.random.SeedSequence([_TAG_FILES, self.seed, epoch]))
        return [int(i) for i in rng.permutation(len(self.files))]

    def _stream(self) -> tuple[int, int]:
        info = get_worker_info()
        nw, wid = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * nw + wid, self.world_size * nw

    def _read_range(self, start: int, stop: int) -> Iterator[Batch]:
        """Rows [start, stop) of the epoch's global sequence, a bounded chunk at a time."""
        widths: dict[str, int] = {}
        offset = 0
        for fi in self.file_order():
            sizes = self._group_sizes[fi]
            file_rows = sum(sizes)
            if offset + file_rows <= start or offset >= stop:
                offset += file_rows
                continue
            pf = pq.ParquetFile(self.files[fi])
            for rg, rg_rows in enumerate(sizes):
                lo, hi = max(start - offset, 0), min(stop - offset, rg_rows)
                if lo < hi:
                    pos = 0
                    for rb in pf.iter_batches(batch_size=self.read_rows, row_groups=[rg], columns=list(self.columns)):
                        n = rb.num_rows
                        a, b = max(lo - pos, 0), min(hi - pos, n)
                        if a < b:
                            yield _record_batch_to_numpy(rb.slice(a, b - a), widths, self.files[fi])
                        pos += n
                        if pos >= hi:
                            break
                offset += rg_rows
                if offset >= stop:
                    return

    def _shuffled(self, chunks: Iterator[Batch], rng: np.random.Generator) -> Iterator[Batch]:
        """Bounded-buffer shuffle: fill to the buffer size, emit a random half, repeat."""
        keep = max(self.shuffle_buffer // 2, 1)
        buf: list[Batch] = []
        count = 0
        for chunk in chunks:
            buf.append(chunk)
            count += _rows(chunk)
            if count >= self.shuffle_buffer:
                merged = _concat(buf)
                perm = rng.permutation(count)
                out = count - keep
                yield _take(merged, perm[:out])
                buf, count = [_take(merged, perm[out:])], keep
        if count:
            merged = _concat(buf)
            yield _take(merged, rng.permutation(count))

    def _rebatched(self, chunks: Iterator[Batch]) -> Iterator[Batch]:
        pending: list[Batch] = []
        count = 0
        bs = self.batch_size
        for chunk in chunks:
            pending.append(chunk)
            count += _rows(chunk)
            if count >= bs:
                merged = _concat(pending)
                full = count - count % bs
                for s in range(0, full, bs):
                    yield _take(merged, slice(s, s + bs))
                pending = [_take(merged, slice(full, count))] if count > full else []
                count -= full
        if count and not self.drop_last:
            yield _concat(pending)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        stream, num_streams = self._stream()
        start, stop = stream_row_range(self.total_rows, stream, num_streams)
        skip = self.skip_batches
        if not self.shuffle:
            # Unshuffled order is positional, so skipping is a seek, not a replay.
            start = min(stop, start + skip * self.batch_size)
            skip = 0
        chunks = self._read_range(start, stop)
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([_TAG_BUFFER, self.seed, self.epoch, stream]))
            chunks = self._shuffled(chunks, rng)
        for i, batch in enumerate(self._rebatched(chunks)):
            if i < skip:
                continue
            yield {k: torch.from_numpy(_owned(v)) for k, v in batch.items()}


def _owned(a: np.ndarray) -> np.ndarray:
    """Writable, contiguous array: unshuffled slices can be read-only views of Arrow buffers."""
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")


def _record_batch_to_numpy(rb: pa.RecordBatch, widths: dict[str, int], path: Path) -> Batch:
    out: Batch = {}
    for name in rb.schema.names:
        col = rb.column(name)
        if col.null_count:
            raise ValueError(f"column '{name}' in {path} has {col.null_count} nulls; fill or drop them before training")
        if name in LIST_COLUMNS:
            out[name] = _list_to_2d(col, name, widths, path)
        else:
            want = np.float32 if name in LABEL_COLUMNS else np.int64
            out[name] = col.to_numpy(zero_copy_only=False).astype(want, copy=False)
    return out


def _list_to_2d(col: pa.Array, name: str, widths: dict[str, int], path: Path) -> np.ndarray:
    n = len(col)
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
    else:
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if n else widths.get(name, 0)
        if n and (lengths != width).any():
            raise ValueError(
                f"column '{name}' in {path} has rows of different lengths ({int(lengths.min())}..{int(lengths.max())}); "
                "every row needs the same fixed length (left-pad histories with 0)"
            )
    if widths.setdefault(name, width) != width:
        raise ValueError(
            f"column '{name}' in {path} has {width} values per row but earlier rows had {widths[name]}; "
            "all shards must be written with the same config"
        )
    values = col.flatten().to_numpy(zero_copy_only=False)
    want = np.float32 if pa.types.is_floating(col.type.value_type) else np.int64
    return values.astype(want, copy=False).reshape(n, width)
