"""__project__'s data: a small synthetic click-through dataset with a known answer, generated in memory.

Why synthetic and shipped with the project: the first `bazel test` and the first `bazel run :train` must
work with nothing to download, and the numbers they print must mean something. Each row has a few
categorical fields (ids) and some dense features; the click probability is a fixed hidden logistic model
with per-id effects and one pairwise interaction, so a model that learns embeddings beats both "predict the
base rate" and a linear model of the dense features, and the held-out AUC says by how much.

Replace `generate` with your reader (Parquet shards: see ml/data) and keep the batch contract:
`{"cat": int64 [rows, len(CARDINALITIES)], "dense": float32 [rows, NUM_DENSE], "label": float32 [rows]}`.
Only numpy here: the trainer turns the arrays into framework tensors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CARDINALITIES", "NUM_DENSE", "base_rate", "batch_slices", "generate"]

# Categorical fields (e.g. advertiser, placement, hour of week) and how many ids each has (id 0 = unknown).
CARDINALITIES = (200, 24, 12)
NUM_DENSE = 8
_WORLD_SEED = 2024  # the hidden model; every split of every size is drawn from the same world


def _world(data_seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_WORLD_SEED + 7919 * data_seed)
    return {
        "field_effects": [rng.normal(0.0, 0.8, size=n) for n in CARDINALITIES],
        "pair_effect": rng.normal(0.0, 0.8, size=(CARDINALITIES[0], CARDINALITIES[1])),
        "dense_weights": rng.normal(0.0, 0.5, size=NUM_DENSE),
        "bias": np.array(-1.2),
    }


def generate(rows: int, *, split: str, data_seed: int = 0) -> dict[str, np.ndarray]:
    """`rows` rows of split "train" or "eval" (disjoint draws from the same hidden model), deterministic."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    world = _world(data_seed)
    rng = np.random.default_rng([data_seed, 0 if split == "train" else 1, rows])
    # Skewed id popularity, as real traffic is: a few advertisers get most impressions.
    cat = np.stack([np.minimum(rng.zipf(1.3, size=rows), n - 1) for n in CARDINALITIES], axis=1).astype(np.int64)
    dense = rng.normal(0.0, 1.0, size=(rows, NUM_DENSE)).astype(np.float32)
    logit = world["bias"] + dense @ world["dense_weights"] + world["pair_effect"][cat[:, 0], cat[:, 1]]
    for field, effects in enumerate(world["field_effects"]):
        logit = logit + effects[cat[:, field]]
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return {"cat": cat, "dense": dense, "label": label}


def base_rate(labels: np.ndarray) -> float:
    """The click rate of the training labels: the baseline that predicts it for every row."""
    return float(np.clip(labels.mean(), 1e-6, 1 - 1e-6))


def batch_slices(rows: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                 skip_batches: int = 0) -> list[np.ndarray]:
    """Row indices of each of this rank's batches in `epoch`: a shuffle fixed by (seed, epoch), full batches only.

    Every rank gets the same number of batches (a global batch is split by striding), so data-parallel ranks
    never wait on each other; `skip_batches` resumes mid-epoch at exactly the next unseen batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    global_batch = batch_size * world_size
    return [order[b * global_batch:(b + 1) * global_batch][rank::world_size]
            for b in range(skip_batches, rows // global_batch)]
