"""Item-popularity baseline: the bar a learned ranker has to clear.

Why: per-item engagement rates capture item quality and nothing about the user, the
context or the position, so a model that does not beat it in AUC has learned nothing
useful. Rates are Beta-smoothed toward the global rate so items seen a handful of times
do not get extreme scores, and unseen items fall back to the global rate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

__all__ = ["PopularityBaseline"]

_COLUMNS = ("item_id", "click", "save")


class PopularityBaseline:
    """Per-item smoothed click and save rates.

    rate_i = (events_i + prior_strength * global_rate) / (impressions_i + prior_strength),
    i.e. the posterior mean under a Beta prior worth ``prior_strength`` impressions. The
    save rate is per impression (P(save)), matching the save head's target.
    """

    def __init__(self, prior_strength: float = 20.0, read_rows: int = 65536) -> None:
        if isinstance(prior_strength, bool) or not isinstance(prior_strength, (int, float)) or not prior_strength > 0:
            raise ValueError(f"prior_strength must be a positive number of pseudo-impressions, got {prior_strength!r}")
        if isinstance(read_rows, bool) or not isinstance(read_rows, int) or read_rows < 1:
            raise ValueError(f"read_rows must be an int >= 1, got {read_rows!r}")
        self.prior_strength = float(prior_strength)
        self.read_rows = read_rows
        self.global_click_rate: float | None = None
        self.global_save_rate: float | None = None
        self.impressions: np.ndarray | None = None
        self.click_rate: np.ndarray | None = None
        self.save_rate: np.ndarray | None = None

    def fit(self, files: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> PopularityBaseline:
        """Count impressions, clicks and saves per item over ``files``, streaming row batches."""
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        paths = [Path(f) for f in files]
        if not paths:
            raise ValueError("fit needs at least one Parquet file with item_id, click and save columns")
        imps = np.zeros(0, dtype=np.float64)
        clicks = np.zeros(0, dtype=np.float64)
        saves = np.zeros(0, dtype=np.float64)
        for path in paths:
            if not path.is_file():
                raise ValueError(f"Parquet file not found: {path}")
            pf = pq.ParquetFile(path)
            missing = [c for c in _COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{path} lacks column(s) {missing}; the baseline needs {list(_COLUMNS)}")
            for rb in pf.iter_batches(batch_size=self.read_rows, columns=list(_COLUMNS)):
                item = rb.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                click = rb.column("click").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                save = rb.column("save").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                if item.size == 0:
                    continue
                if item.min() < 0:
                    raise ValueError(f"{path} has negative item_id values; ids must be >= 0")
                size = max(len(imps), int(item.max()) + 1)
                imps = _grow(imps, size) + np.bincount(item, minlength=size)
                clicks = _grow(clicks, size) + np.bincount(item, weights=click, minlength=size)
                saves = _grow(saves, size) + np.bincount(item, weights=save, minlength=size)
        total = imps.sum()
        if total == 0:
            raise ValueError(f"no rows in {[str(p) for p in paths]}; fit needs training impressions")
        k = self.prior_strength
        self.global_click_rate = float(clicks.sum() / total)
        self.global_save_rate = float(saves.sum() / total)
        self.impressions = imps
        self.click_rate = (clicks + k * self.global_click_rate) / (imps + k)
        self.save_rate = (saves + k * self.global_save_rate) / (imps + k)
        return self

    def predict(self, item_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(click), P(save)) per item id, float64; ids never seen in fit get the global rates."""
        if self.click_rate is None or self.save_rate is None:
            raise ValueError("PopularityBaseline is not fitted; call fit(files) before predict")
        ids = np.asarray(item_id)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"item_id must be an integer array, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        known = (ids >= 0) & (ids < len(self.click_rate))
        safe = np.where(known, ids, 0)
        click = np.where(known, self.click_rate[safe], self.global_click_rate)
        save = np.where(known, self.save_rate[safe], self.global_save_rate)
        return click, save


def _grow(a: np.ndarray, size: int) -> np.ndarray:
    if len(a) >= size:
        return a
    return np.concatenate([a, np.zeros(size - len(a), dtype=a.dtype)])
