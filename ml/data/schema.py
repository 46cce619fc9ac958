"""The feed-impression table schema shared by every project that reads the synthetic (or real) feed logs.

Why a shared module: the ranking project (ml/homefeed, PyTorch) and the retrieval project (ml/retrieval,
TensorFlow) train on the same Parquet shards, so the column contract lives here, owned by neither, and
imports no ML framework.

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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

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
    "validate_schema",
    "check_int",
    "check_float",
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


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise ValueError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_float(name: str, value: Any, low: float, high: float) -> None:
    """Raise ValueError unless ``value`` is a number in [low, high] (NaN refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    if not (low <= float(value) <= high) or math.isnan(float(value)):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


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
        ok = _value_type(got) == want_value if want_value is not None else got == field.type
        if not ok:
            problems.append(f"column '{field.name}' has type {got}, expected {field.type}")
    if problems:
        raise ValueError(
            f"{where} does not match the feed schema: " + "; ".join(problems)
            + ". Write shards with ml.data.schema.SCHEMA (cast the columns to these types)."
        )

