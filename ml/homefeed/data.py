"""Home-feed data for the PyTorch ranker: the shared feed library (ml/data) plus a DataLoader wrapper.

The schema, the synthetic world and the streaming sharded Parquet reader live in ml/data, owned by no
project (ml/retrieval reads the same shards from TensorFlow). This module re-exports them under the names
homefeed has always used and adds what only a PyTorch project needs: :class:`ParquetStream`, an
``IterableDataset`` whose DataLoader workers each read their own stream, and
:func:`model_config_kwargs` (the sizes ``HomefeedModelConfig`` takes).

Real logs plug in by writing shards with :data:`SCHEMA` and pointing :class:`ParquetStream` at them
(:func:`validate_schema` says which columns are missing or mistyped).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ml.data.parquet import Batch, ParquetBatches, batches_per_epoch, num_rows, stream_row_range
from ml.data.schema import (
    ACTION_CLICK,
    ACTION_SAVE,
    ACTION_VIEW,
    LABEL_COLUMNS,
    LIST_COLUMNS,
    NUM_ACTION_TYPES,
    OPTIONAL_COLUMNS,
    PAD_ID,
    REQUIRED_COLUMNS,
    SCHEMA,
    validate_schema,
)
from ml.data.synthetic import SyntheticConfig, generate_shards, shard_name

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
    "Batch",
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


def model_config_kwargs(cfg: SyntheticConfig) -> dict[str, Any]:
    """Sizes a ``HomefeedModelConfig`` needs, so model.py never has to import the data library."""
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


class ParquetStream(ParquetBatches, IterableDataset):
    """:class:`ml.data.parquet.ParquetBatches` as a PyTorch ``IterableDataset`` of tensors.

    Each DataLoader worker is its own stream (stream = rank * num_workers + worker_id), so ranks and
    workers read disjoint rows without a coordinator. Use with
    ``DataLoader(ds, batch_size=None, num_workers=k)``. ``set_epoch`` must be called before the
    DataLoader iterator is created (workers copy the dataset then; avoid ``persistent_workers=True``).
    Yields ``dict[str, Tensor]``.
    """

    def stream(self) -> tuple[int, int]:
        """(stream, num_streams) of the calling DataLoader worker (or of the main process)."""
        info = get_worker_info()
        nw, wid = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * nw + wid, self.world_size * nw

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.iter_stream(*self.stream()):
            yield {k: torch.from_numpy(v) for k, v in batch.items()}
