"""Tests for ml/homefeed/data.py: determinism, schema contract, exact sharding, resume."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from ml.data import synthetic
from ml.homefeed import data

SMALL = data.SyntheticConfig(num_users=400, num_items=300, num_topics=10, seq_len=8, num_dense=5, seed=3)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    # Odd sizes on purpose: shards and row groups do not divide evenly into streams or batches.
    out = tmp_path_factory.mktemp("shards")
    return data.generate_shards(out, SMALL, num_samples=2003, num_shards=3, rows_per_group=300)


def _all_rows(files: list[Path]) -> pa.Table:
    return pq.read_table(files)


def _keys(batches: list[dict[str, torch.Tensor]]) -> list[tuple[int, int, int, int]]:
    out = []
    for b in batches:
        cols = [b[k].tolist() for k in ("row_id", "user_id", "item_id", "position")]
        out.extend(zip(*cols, strict=True))
    return out


def _fake_worker(monkeypatch: pytest.MonkeyPatch, num_workers: int, worker_id: int) -> None:
    info = types.SimpleNamespace(num_workers=num_workers, id=worker_id)
    monkeypatch.setattr(data, "get_worker_info", lambda: info)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value",
    [
        ("num_users", 0),
        ("num_items", -5),
        ("seq_len", 0),
        ("num_dense", 1.5),
        ("context_cardinalities", ()),
        ("zipf_exponent", -1.0),
        ("label_noise", 0.9),
        ("popularity_mix", 2.0),
        ("seed", -1),
    ],
)
def test_bad_config_raises_value_error_naming_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        data.SyntheticConfig(**{field: value})


def test_too_few_items_for_topics_is_explained() -> None:
    with pytest.raises(ValueError, match="num_topics"):
        data.SyntheticConfig(num_items=5, num_topics=10)


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_shards"):
        data.generate_shards(tmp_path, SMALL, num_samples=2, num_shards=3)
    with pytest.raises(ValueError, match="split"):
        data.generate_shards(tmp_path, SMALL, num_samples=10, num_shards=1, split="../evil")
    with pytest.raises(ValueError, match="num_samples"):
        data.generate_shards(tmp_path, SMALL, num_samples=0, num_shards=1)


def test_model_config_kwargs_matches_data() -> None:
    kw = data.model_config_kwargs(SMALL)
    assert kw["num_users"] == 400 and kw["num_items"] == 300 and kw["seq_len"] == 8
    assert kw["context_cardinalities"] == SMALL.context_cardinalities and kw["num_dense"] == 5
    assert kw["num_action_types"] == data.NUM_ACTION_TYPES


# ----------------------------------------------------------------------------- generation
def test_generation_is_byte_deterministic(tmp_path: Path) -> None:
    a = data.generate_shards(tmp_path / "a", SMALL, num_samples=1500, num_shards=2, split="train")
    b = data.generate_shards(tmp_path / "b", SMALL, num_samples=1500, num_shards=2, split="train")
    assert [p.name for p in a] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [_sha(p) for p in a] == [_sha(p) for p in b]
    ev = data.generate_shards(tmp_path / "a", SMALL, num_samples=1500, num_shards=2, split="eval")
    assert _sha(ev[0]) != _sha(a[0])
    other_seed = data.generate_shards(tmp_path / "c", dataclasses.replace(SMALL, seed=4), 1500, 2)
    assert _sha(other_seed[0]) != _sha(a[0])


def test_splits_differ_but_share_one_world(tmp_path: Path) -> None:
    cfg = data.SyntheticConfig(num_users=500, num_items=200, num_topics=10, seq_len=6, seed=11)
    tr = _all_rows(data.generate_shards(tmp_path, cfg, 20000, 1, split="train"))
    ev = _all_rows(data.generate_shards(tmp_path, cfg, 20000, 1, split="eval"))
    assert not np.array_equal(tr["item_id"].to_numpy(), ev["item_id"].to_numpy())
    # Same hidden world: per-item popularity and click rate agree across splits.
    n_tr = np.bincount(tr["item_id"].to_numpy(), minlength=cfg.num_items + 1)[1:]
    n_ev = np.bincount(ev["item_id"].to_numpy(), minlength=cfg.num_items + 1)[1:]
    assert np.corrcoef(n_tr, n_ev)[0, 1] > 0.95
    c_tr = np.bincount(tr["item_id"].to_numpy(), tr["click"].to_numpy(), cfg.num_items + 1)[1:] / np.maximum(n_tr, 1)
    c_ev = np.bincount(ev["item_id"].to_numpy(), ev["click"].to_numpy(), cfg.num_items + 1)[1:] / np.maximum(n_ev, 1)
    busy = (n_tr > 100) & (n_ev > 100)
    assert busy.sum() > 20 and np.corrcoef(c_tr[busy], c_ev[busy])[0, 1] > 0.5


def test_rows_follow_the_schema_and_conventions(shards: list[Path]) -> None:
    table = _all_rows(shards)
    data.validate_schema(table.schema)
    assert table.num_rows == 2003 == data.num_rows(shards)
    assert sorted(table["row_id"].to_pylist()) == list(range(2003))
    L = SMALL.seq_len
    items = np.stack(table["hist_items"].to_numpy(zero_copy_only=False))
    actions = np.stack(table["hist_actions"].to_numpy(zero_copy_only=False))
    gaps = np.stack(table["hist_gaps"].to_numpy(zero_copy_only=False))
    assert items.shape == actions.shape == gaps.shape == (2003, L)
    pad = items == data.PAD_ID
    assert np.array_equal(pad, actions == 0) and np.all(gaps[pad] == 0)
    assert np.all(actions[~pad] >= data.ACTION_VIEW) and np.all(actions[~pad] <= data.ACTION_SAVE)
    assert np.all(gaps[~pad] > 0)
    # Left padding: once a row's history starts it never goes back to padding.
    assert np.all(np.diff(pad.astype(np.int8), axis=1) <= 0)
    assert pad.all(axis=1).any() and (~pad).all(axis=1).any()
    # Most recent action (right end) is the closest in time.
    full = ~pad.any(axis=1)
    assert np.all(np.diff(gaps[full], axis=1) <= 0)
    ctx = np.stack(table["context"].to_numpy(zero_copy_only=False))
    for j, c in enumerate(SMALL.context_cardinalities):
        assert ctx[:, j].min() >= 0 and ctx[:, j].max() < c
    assert table["item_id"].to_numpy().min() >= 1 and table["item_id"].to_numpy().max() <= SMALL.num_items
    pos = table["position"].to_numpy()
    assert pos.min() == 0 and pos.max() == SMALL.num_positions - 1


def test_popularity_skew_and_label_rates(tmp_path: Path) -> None:
    cfg = data.SyntheticConfig(num_users=1000, num_items=500, seed=5)
    t = _all_rows(data.generate_shards(tmp_path, cfg, 30000, 2))
    counts = np.sort(np.bincount(t["item_id"].to_numpy(), minlength=cfg.num_items + 1)[1:])[::-1]
    top_share = counts[: cfg.num_items // 10].sum() / counts.sum()
    assert top_share > 0.4, top_share
    click, save = t["click"].to_numpy(), t["save"].to_numpy()
    assert 0.05 < click.mean() < 0.40, click.mean()
    assert 0.0 < save.mean() < click.mean()
    assert np.all(save <= click)  # a save implies a click
    pos = t["position"].to_numpy()
    assert click[pos == 0].mean() > click[pos == cfg.num_positions - 1].mean() + 0.03


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = (np.bincount(inverse, weights=np.arange(1, len(scores) + 1)) / counts)[inverse]
    pos = labels.sum()
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))


def test_planted_signal_is_well_above_popularity() -> None:
    # The true click probability must rank far better than any per-item rate, otherwise
    # no model could clearly beat the popularity baseline on this data.
    cfg = data.SyntheticConfig()
    rows = synthetic._generate_chunk(synthetic._build_world(cfg), cfg, np.random.default_rng(0), 40000)
    click, items = rows["click"].astype(np.float64), rows["item_id"]
    n = np.bincount(items, minlength=cfg.num_items + 1)
    item_rate = np.bincount(items, click, minlength=cfg.num_items + 1) / np.maximum(n, 1)
    popularity_auc = _auc(click, item_rate[items])  # in-sample, so an optimistic bar
    oracle_auc = _auc(click, rows["_p_click"])
    assert popularity_auc > 0.55
    assert oracle_auc > popularity_auc + 0.1, (oracle_auc, popularity_auc)


# ----------------------------------------------------------------------------- schema
def test_validate_schema_names_missing_and_mistyped_columns() -> None:
    fields = [f for f in data.SCHEMA if f.name != "click"]
    fields = [pa.field("dense", pa.list_(pa.float64())) if f.name == "dense" else f for f in fields]
    fields = [pa.field("user_id", pa.int32()) if f.name == "user_id" else f for f in fields]
    with pytest.raises(ValueError) as err:
        data.validate_schema(pa.schema(fields))
    msg = str(err.value)
    assert "'click'" in msg and "'dense'" in msg and "'user_id'" in msg and "'item_id'" not in msg


def test_validate_schema_accepts_other_list_flavours_and_no_row_id() -> None:
    fields = [f for f in data.SCHEMA if f.name != "row_id"]
    fields = [pa.field("dense", pa.list_(pa.float32(), 5)) if f.name == "dense" else f for f in fields]
    fields = [pa.field("hist_items", pa.large_list(pa.int64())) if f.name == "hist_items" else f for f in fields]
    data.validate_schema(pa.schema(fields))


def test_stream_rejects_bad_files_and_arguments(tmp_path: Path, shards: list[Path]) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(shards[0]).drop_columns(["save"]), bad)
    with pytest.raises(ValueError, match="save"):
        data.ParquetStream([bad], 16)
    with pytest.raises(ValueError, match="not found"):
        data.ParquetStream([tmp_path / "missing.parquet"], 16)
    with pytest.raises(ValueError, match="rank"):
        data.ParquetStream(shards, 16, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        data.ParquetStream(shards, 0)


def test_ragged_list_column_is_reported(tmp_path: Path, shards: list[Path]) -> None:
    t = pq.read_table(shards[0]).slice(0, 4)
    dense = t["dense"].to_pylist()
    dense[2] = dense[2][:-1]
    t = t.set_column(t.schema.get_field_index("dense"), "dense", pa.array(dense, type=pa.list_(pa.float32())))
    path = tmp_path / "ragged.parquet"
    pq.write_table(t, path)
    with pytest.raises(ValueError, match="dense"):
        list(data.ParquetStream([path], 4))


def test_real_data_without_row_id_streams(tmp_path: Path, shards: list[Path]) -> None:
    path = tmp_path / "real.parquet"
    pq.write_table(pq.read_table(shards[0]).drop_columns(["row_id"]), path)
    batch = next(iter(data.ParquetStream([path], 8)))
    assert "row_id" not in batch and batch["click"].shape == (8,)


# ----------------------------------------------------------------------------- streaming
def test_batches_have_collated_tensors(shards: list[Path]) -> None:
    batch = next(iter(data.ParquetStream(shards, 32)))
    C, D, L = SMALL.num_categorical, SMALL.num_dense, SMALL.seq_len
    expect = {
        "user_id": ((32,), torch.int64),
        "item_id": ((32,), torch.int64),
        "position": ((32,), torch.int64),
        "context": ((32, C), torch.int64),
        "dense": ((32, D), torch.float32),
        "hist_items": ((32, L), torch.int64),
        "hist_actions": ((32, L), torch.int64),
        "hist_gaps": ((32, L), torch.float32),
        "click": ((32,), torch.float32),
        "save": ((32,), torch.float32),
        "row_id": ((32,), torch.int64),
    }
    assert set(batch) == set(expect)
    for k, (shape, dtype) in expect.items():
        assert tuple(batch[k].shape) == shape and batch[k].dtype == dtype, k


def test_stream_values_match_the_files(shards: list[Path]) -> None:
    table = _all_rows(shards)
    by_id = {r: i for i, r in enumerate(table["row_id"].to_pylist())}
    dense = np.stack(table["dense"].to_numpy(zero_copy_only=False))
    hist = np.stack(table["hist_items"].to_numpy(zero_copy_only=False))
    for batch in data.ParquetStream(shards, 500, seed=7):
        idx = [by_id[r] for r in batch["row_id"].tolist()]
        assert np.array_equal(batch["dense"].numpy(), dense[idx])
        assert np.array_equal(batch["hist_items"].numpy(), hist[idx])
        assert np.array_equal(batch["click"].numpy(), table["click"].to_numpy()[idx])


@pytest.mark.parametrize("world_size, num_workers", [(2, 2), (3, 1), (1, 4), (4, 3)])
@pytest.mark.parametrize("drop_last", [False])
def test_streams_cover_every_row_exactly_once(
    monkeypatch: pytest.MonkeyPatch, shards: list[Path], world_size: int, num_workers: int, drop_last: bool
) -> None:
    expected = collections.Counter(
        zip(*(_all_rows(shards)[k].to_pylist() for k in ("row_id", "user_id", "item_id", "position")), strict=True)
    )
    got: collections.Counter = collections.Counter()
    for rank in range(world_size):
        for worker in range(num_workers):
            _fake_worker(monkeypatch, num_workers, worker)
            ds = data.ParquetStream(shards, 64, rank=rank, world_size=world_size, seed=1, epoch=2)
            got.update(_keys(list(ds)))
    assert got == expected


def test_dataloader_workers_and_ranks_cover_every_row_exactly_once(shards: list[Path]) -> None:
    expected = collections.Counter(
        zip(*(_all_rows(shards)[k].to_pylist() for k in ("row_id", "user_id", "item_id", "position")), strict=True)
    )
    got: collections.Counter = collections.Counter()
    per_rank = []
    for rank in range(2):
        ds = data.ParquetStream(shards, 100, rank=rank, world_size=2, seed=5, epoch=1)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert all(b["user_id"].dtype == torch.int64 for b in batches)
        per_rank.append(len(batches))
        got.update(_keys(batches))
    assert got == expected
    assert min(per_rank) == data.batches_per_epoch(shards, 100, world_size=2, num_workers=2)


def test_epoch_changes_order_reproducibly(shards: list[Path]) -> None:
    def order(epoch: int) -> list[int]:
        ds = data.ParquetStream(shards, 128, seed=9)
        ds.set_epoch(epoch)
        return [r for b in ds for r in b["row_id"].tolist()]

    e0, e0_again, e1 = order(0), order(0), order(1)
    assert e0 == e0_again
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(2003))
    assert order(0) != [r for b in data.ParquetStream(shards, 128, seed=10) for r in b["row_id"].tolist()]
    # Shuffling actually mixes rows, not just whole files.
    assert sum(a + 1 == b for a, b in itertools.pairwise(e0)) < 200
    unshuffled = [r for b in data.ParquetStream(shards, 128, shuffle=False) for r in b["row_id"].tolist()]
    assert unshuffled == list(range(2003))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("skip", [0, 3, 7, 100])
def test_skip_batches_resumes_at_the_same_position(shards: list[Path], shuffle: bool, skip: int) -> None:
    kw = dict(rank=1, world_size=2, shuffle=shuffle, seed=4, epoch=3, shuffle_buffer=256)
    full = list(data.ParquetStream(shards, 50, **kw))
    resumed = list(data.ParquetStream(shards, 50, skip_batches=skip, **kw))
    assert len(resumed) == max(len(full) - skip, 0)
    for a, b in zip(full[skip:], resumed, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_skip_batches_applies_per_worker_stream(monkeypatch: pytest.MonkeyPatch, shards: list[Path]) -> None:
    _fake_worker(monkeypatch, 2, 1)
    full = list(data.ParquetStream(shards, 40, seed=2))
    resumed = list(data.ParquetStream(shards, 40, seed=2, skip_batches=5))
    assert [b["row_id"].tolist() for b in full[5:]] == [b["row_id"].tolist() for b in resumed]


@pytest.mark.parametrize(
    "batch_size, world_size", [(1, 1), (64, 1), (64, 2), (64, 3), (500, 2), (500, 3), (3000, 1), (3000, 2)]
)
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_per_epoch_matches_the_stream(
    shards: list[Path], batch_size: int, world_size: int, drop_last: bool
) -> None:
    counts = []
    for rank in range(world_size):
        ds = data.ParquetStream(shards, batch_size, rank=rank, world_size=world_size, drop_last=drop_last)
        batches = list(ds)
        counts.append(len(batches))
        sizes = [len(b["row_id"]) for b in batches]
        assert all(s == batch_size for s in sizes[:-1])
        if drop_last and sizes:
            assert sizes[-1] == batch_size
    bpe = data.batches_per_epoch(shards, batch_size, world_size, drop_last)
    assert bpe == min(counts)
    assert max(counts) - bpe <= 1
    if world_size == 1:
        expected = 2003 // batch_size if drop_last else -(-2003 // batch_size)
        assert bpe == expected


def test_stream_row_ranges_partition() -> None:
    for total in (0, 1, 7, 2003):
        for n in (1, 2, 3, 8):
            ranges = [data.stream_row_range(total, s, n) for s in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            sizes = [hi - lo for lo, hi in ranges]
            assert max(sizes) - min(sizes) <= 1
