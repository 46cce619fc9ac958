"""Ray Data as an optional input path: feed Parquet shards read and preprocessed on Ray's CPU workers.

Why a second path next to ml.data.parquet: the streaming reader runs inside each training process, so its
decoding competes with the model for that process's CPU and scales only with the number of trainers. Under Ray
Train, Ray Data reads the shards and turns Arrow into training arrays in its own tasks (on any node with spare
CPUs), streams the result to the trainers and splits it among them, so data loading scales apart from training.

The arrays are the reader's: :func:`preprocess` is the reader's Arrow-to-numpy conversion (same keys, dtypes,
2-D list columns, ``row_id`` only when every shard has it), so the model code does not change. What differs:
Ray Data's split is dynamic, so which worker gets which rows, and their order, is not a pure function of the
seed; every row is still read exactly once per epoch (when the row count divides by the worker count; otherwise
Ray drops up to ``world_size - 1`` rows so the workers step in lockstep), and a mid-epoch resume skips a number
of batches, not the exact rows the stopped run had read.

Two sides:

- the driver (the process that builds the ``TorchTrainer``): :func:`datasets_for` and :func:`data_config`;
- each Train worker: :func:`torch_batches` (and :func:`batches_per_epoch` for the loop's step count).

Imports ray (and torch, in :func:`torch_batches`) only when called, so importing this module costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ml.data.parquet import Batch, _record_batch_to_numpy
from ml.data.schema import LIST_COLUMNS, REQUIRED_COLUMNS, SCHEMA, check_int, validate_schema

__all__ = [
    "FeedSource",
    "TRAIN",
    "batches_per_epoch",
    "data_config",
    "datasets_for",
    "feed_source",
    "in_train_worker",
    "preprocess",
    "read_feed",
    "torch_batches",
]

TRAIN = "train"
"""The dataset name trainers ask for; the key of :func:`datasets_for`'s result."""

_PATH = "path"  # the column read_parquet(include_paths=True) adds: named in error messages, then dropped
_TAG_LOCAL = 0x52_44_4C


@dataclass(frozen=True)
class FeedSource:
    """Parquet shards resolved on the driver: their paths (inside ``filesystem``), and what the reader would yield.

    ``widths`` fixes every list column's row length from the first shard, so a shard written with other sizes
    fails with the reader's message instead of deep inside Ray's block concatenation.
    """

    paths: tuple[str, ...]
    filesystem: pafs.FileSystem
    columns: tuple[str, ...]
    widths: dict[str, int]
    total_rows: int


def _resolve(uri: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
             filesystem: pafs.FileSystem | Any | None) -> tuple[list[str], pafs.FileSystem, bool]:
    """(paths, filesystem, listed_from_folder). Accepts a folder or file URI/path, or a list of files."""
    if filesystem is not None and not isinstance(filesystem, pafs.FileSystem):
        # An fsspec filesystem (s3fs, gcsfs, adlfs, ...): pyarrow wraps it.
        filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    items = [uri] if isinstance(uri, (str, os.PathLike)) else list(uri)
    if not items:
        raise ValueError("no Parquet shards given: pass a folder, a URI (s3://bucket/prefix) or a list of files")
    paths: list[str] = []
    for item in items:
        text = os.fspath(item)
        if filesystem is None:
            if "://" not in text:
                text = os.path.abspath(text)
            try:
                filesystem, text = pafs.FileSystem.from_uri(text if "://" in text else "file://" + text)
            except (pa.ArrowInvalid, ValueError) as exc:
                raise ValueError(f"cannot open {os.fspath(item)!r}: {exc}; pass a local folder, a URI that "
                                 f"pyarrow knows (s3://, gs://, hdfs://) or filesystem= (fsspec works)") from None
        elif "://" in text:
            text = text.split("://", 1)[1]
        paths.append(text)
    folder = len(paths) == 1 and filesystem.get_file_info(paths[0]).type == pafs.FileType.Directory
    return paths, filesystem, folder


def feed_source(uri: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, split: str = TRAIN,
                filesystem: pafs.FileSystem | Any | None = None) -> FeedSource:
    """Lists and checks the shards of ``split`` (``<split>-*.parquet`` in a folder) or the given files.

    Reads only footers and one row of the first shard; raises ValueError naming what is missing or mistyped.
    """
    paths, fs, folder = _resolve(uri, filesystem)
    where = os.fspath(uri) if isinstance(uri, (str, os.PathLike)) else "the given files"
    if folder:
        selector = pafs.FileSelector(paths[0], recursive=False)
        paths = sorted(i.path for i in fs.get_file_info(selector)
                       if i.type == pafs.FileType.File and i.base_name.startswith(f"{split}-")
                       and i.base_name.endswith(".parquet"))
        if not paths:
            raise ValueError(f"{where} has no {split}-*.parquet shards; generate them (ml.data.synthetic) or point "
                             f"at the folder that holds them")
    else:
        missing = [p for p in paths if fs.get_file_info(p).type != pafs.FileType.File]
        if missing:
            raise ValueError(f"Parquet shard(s) not found: {missing}; check the path or generate them first")
    has_row_id, total, first = [], 0, None
    for p in paths:
        with fs.open_input_file(p) as f:
            pf = pq.ParquetFile(f)
            validate_schema(pf.schema_arrow, where=f"Parquet shard {p}")
            has_row_id.append("row_id" in pf.schema_arrow.names)
            total += pf.metadata.num_rows
            if p == paths[0]:
                first = pf.read_row_group(0, columns=list(LIST_COLUMNS)).slice(0, 1) if pf.num_row_groups else None
    columns = tuple(n for n in SCHEMA.names if n in REQUIRED_COLUMNS or (n == "row_id" and all(has_row_id)))
    widths = {}
    if first is not None and first.num_rows:
        widths = {n: len(first.column(n)[0]) for n in LIST_COLUMNS}
    return FeedSource(tuple(paths), fs, columns, widths, total)


class _Preprocess:
    """The map_batches function: an Arrow table of shard rows -> the reader's numpy batch (picklable)."""

    def __init__(self, columns: Sequence[str], widths: dict[str, int]) -> None:
        self.columns = tuple(columns)
        self.widths = dict(widths)

    def __call__(self, table: pa.Table) -> Batch:
        return preprocess(table, self.columns, self.widths)


def preprocess(table: pa.Table, columns: Sequence[str], widths: dict[str, int] | None = None) -> Batch:
    """Shard rows (an Arrow table, optionally with read_parquet's ``path`` column) as the reader's numpy batch.

    Same conversion as :class:`ml.data.parquet.ParquetBatches`: int64 ids, float32 labels, list columns as 2-D
    arrays of one fixed width, nulls refused. ``widths`` (updated in place) pins each list column's width.
    """
    widths = {} if widths is None else widths
    sources = table.column(_PATH) if _PATH in table.column_names else None
    data = table.select(list(columns))
    parts: list[Batch] = []
    offset = 0
    for rb in data.to_batches():
        n = rb.num_rows
        where = sources[offset].as_py() if sources is not None and n else "a Ray Data block"
        parts.append(_record_batch_to_numpy(rb, widths, where))
        offset += n
    if not parts:
        return {name: np.zeros((0, widths.get(name, 0)) if name in LIST_COLUMNS else (0,),
                               np.float32 if pa.types.is_floating(_value_type(name)) else np.int64)
                for name in columns}
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _value_type(name: str) -> pa.DataType:
    t = SCHEMA.field(name).type
    return t.value_type if pa.types.is_list(t) else t


def read_feed(source: FeedSource | str | os.PathLike[str] | Sequence[str], *, split: str = TRAIN, seed: int = 0,
              shuffle_files: bool = True, filesystem: pafs.FileSystem | Any | None = None,
              num_cpus: float = 1.0, concurrency: int | None = None) -> Any:
    """A lazy ``ray.data.Dataset`` of preprocessed feed rows (streaming: nothing is read until iterated).

    Files are read by Ray's read tasks and converted by ``map_batches`` tasks, ``num_cpus`` each (at most
    ``concurrency`` conversions at once; None lets Ray decide). Under Ray Train, keep ``num_cpus`` plus the
    workers' CPUs within a node's CPUs, or the read tasks wait for CPUs the trainers hold (a hang).
    ``shuffle_files`` reorders the files each epoch (seeded by ``seed`` and the epoch's execution number); rows
    are shuffled again on the trainer side by :func:`torch_batches`.
    """
    import ray.data

    if not isinstance(source, FeedSource):
        source = feed_source(source, split=split, filesystem=filesystem)
    check_int("seed", seed, minimum=0)
    shuffle = ray.data.FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle_files else None
    ds = ray.data.read_parquet(list(source.paths), filesystem=source.filesystem, shuffle=shuffle,
                               include_paths=True, partitioning=None, num_cpus=num_cpus)
    return ds.map_batches(_Preprocess(source.columns, source.widths), batch_format="pyarrow", batch_size=4096,
                          num_cpus=num_cpus, concurrency=concurrency)


def datasets_for(train: FeedSource | str | os.PathLike[str] | Sequence[str], *, seed: int = 0,
                 filesystem: pafs.FileSystem | Any | None = None, num_cpus: float = 1.0,
                 concurrency: int | None = None) -> dict[str, Any]:
    """Driver side: ``{"train": Dataset}`` to pass as ``TorchTrainer(datasets=..., dataset_config=data_config())``.

    ``train`` is a folder or URI holding ``train-*.parquet``, a list of shard files, or a :class:`FeedSource`.
    """
    return {TRAIN: read_feed(train, split=TRAIN, seed=seed, filesystem=filesystem, num_cpus=num_cpus,
                             concurrency=concurrency)}


def data_config() -> Any:
    """Driver side: the ``ray.train.DataConfig`` the trainers expect (the train set split evenly across workers).

    Even split (``streaming_split(equal=True)``, Ray Train's default) keeps DDP ranks in lockstep: every worker
    gets ``total_rows // world_size`` rows per epoch.
    """
    import ray.train

    return ray.train.DataConfig(datasets_to_split=[TRAIN])


def batches_per_epoch(total_rows: int, batch_size: int, world_size: int, drop_last: bool = True) -> int:
    """Batches each worker gets per epoch from :func:`torch_batches` (the same on every worker)."""
    check_int("total_rows", total_rows, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    check_int("world_size", world_size, minimum=1)
    rows = total_rows // world_size
    return rows // batch_size if drop_last else -(-rows // batch_size)


def in_train_worker() -> bool:
    """True inside a Ray Train worker (where :func:`torch_batches` can find its shard)."""
    import sys

    if "ray" not in sys.modules:  # a process Ray Train started has imported ray already
        return False
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
    except Exception:  # noqa: BLE001 - any failure means "no Train context here"
        return False
    return True


def _shard(name: str) -> Any:
    if not in_train_worker():
        raise RuntimeError(
            "the Ray Data input path only works inside a Ray Train worker (TorchTrainer) whose driver passed "
            "datasets=ml.data.ray_data.datasets_for(...); launch with `--on ray`, or drop input=ray_data to read "
            "the shards in-process")
    import ray.train

    try:
        shard = ray.train.get_dataset_shard(name)
    except KeyError:
        shard = None
    if shard is None:
        raise RuntimeError(f"this Ray Train worker has no dataset {name!r}: the driver must build the TorchTrainer "
                           f"with datasets=ml.data.ray_data.datasets_for(...) (key {name!r})")
    return shard


def torch_batches(batch_size: int, *, epoch: int = 0, seed: int = 0, name: str = TRAIN, drop_last: bool = True,
                  shuffle_buffer: int | None = 16384, skip_batches: int = 0, device: str = "cpu",
                  prefetch_batches: int = 2) -> Iterable[dict[str, Any]]:
    """Worker side: this worker's part of one epoch as ``dict[str, torch.Tensor]``, like the reader's batches.

    Call once per epoch; every worker must iterate (Ray starts an epoch when all of them ask). Rows are shuffled
    through a local buffer of ``shuffle_buffer`` rows seeded by (seed, epoch, rank); None or 0 turns that off.
    ``skip_batches`` drops the first batches (a mid-epoch resume: the count matches, the rows do not).
    """
    check_int("batch_size", batch_size, minimum=1)
    check_int("epoch", epoch, minimum=0)
    check_int("seed", seed, minimum=0)
    check_int("skip_batches", skip_batches, minimum=0)
    shard = _shard(name)
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    local_seed = None
    if shuffle_buffer:
        local_seed = int(np.random.SeedSequence([_TAG_LOCAL, seed, epoch, rank]).generate_state(1)[0] >> 1)
    batches = shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last, device=device,
                                       local_shuffle_buffer_size=shuffle_buffer or None,
                                       local_shuffle_seed=local_seed, prefetch_batches=prefetch_batches)
    return _skipping(batches, skip_batches)


def _skipping(batches: Iterable[Any], skip: int) -> Iterator[Any]:
    for i, batch in enumerate(batches):
        if i >= skip:
            yield batch
