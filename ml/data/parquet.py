"""Streaming, exactly-once, stream-sharded reading of feed Parquet shards, as numpy batches.

Why framework-neutral: PyTorch (ml/homefeed wraps it in an IterableDataset) and TensorFlow
(ml/retrieval wraps it in tf.data) both need disjoint per-rank/per-worker streams that a resumed job can
re-enter at the batch it stopped at; the logic lives here once, with numpy at the boundary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ml.data.schema import LABEL_COLUMNS, LIST_COLUMNS, REQUIRED_COLUMNS, SCHEMA, check_int, validate_schema

__all__ = ["Batch", "ParquetBatches", "owned", "batches_per_epoch", "num_rows", "stream_row_range"]

_TAG_FILES = 0x46_49_4C
_TAG_BUFFER = 0x42_55_46


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
    check_int("batch_size", batch_size, minimum=1)
    check_int("world_size", world_size, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
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



class ParquetBatches:
    """Streams already-collated numpy batches from Parquet shards, exactly once per row per epoch.

    Why this shape: data-parallel ranks (and a framework's loader workers) must see disjoint data
    without a coordinator, and a resumed job must land on the same sample it stopped at. So each
    epoch defines one global row order (file order shuffled by (seed, epoch)); that sequence is cut
    into ``num_streams`` contiguous ranges; each stream reads only its range, row group by row group,
    and shuffles it through a bounded buffer seeded by (seed, epoch, stream). Everything is a pure
    function of (files, seed, epoch, stream), so ``skip_batches`` can replay a stream's first n
    batches without yielding them.

    Iterating yields the stream ``rank`` of ``world_size`` (one reader per rank); a framework wrapper
    with several loader workers overrides :meth:`stream` (ml/homefeed's DataLoader wrapper does:
    stream = rank * num_workers + worker_id). Batches are ``dict[str, np.ndarray]`` with the SCHEMA
    columns (``row_id`` only when every shard has it), list columns as 2-D arrays.
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
        self.files = _as_paths(files)
        check_int("batch_size", batch_size, minimum=1)
        check_int("world_size", world_size, minimum=1)
        check_int("rank", rank, minimum=0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
        check_int("seed", seed, minimum=0)
        check_int("epoch", epoch, minimum=0)
        check_int("skip_batches", skip_batches, minimum=0)
        check_int("shuffle_buffer", shuffle_buffer, minimum=1)
        check_int("read_rows", read_rows, minimum=1)
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
        check_int("epoch", epoch, minimum=0)
        self.epoch = int(epoch)

    def file_order(self, epoch: int | None = None) -> list[int]:
        """Indices into ``files`` in the order the epoch reads them."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(len(self.files)))
        rng = np.random.default_rng(np.random.SeedSequence([_TAG_FILES, self.seed, epoch]))
        return [int(i) for i in rng.permutation(len(self.files))]

    def stream(self) -> tuple[int, int]:
        """(stream, num_streams) this reader serves when iterated: one stream per rank."""
        return self.rank, self.world_size

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

    def iter_stream(self, stream: int, num_streams: int) -> Iterator[Batch]:
        """Batches of stream ``stream`` of ``num_streams`` for the current epoch, after ``skip_batches``."""
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
            yield {k: owned(v) for k, v in batch.items()}

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_stream(*self.stream())


def owned(a: np.ndarray) -> np.ndarray:
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
