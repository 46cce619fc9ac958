"""Tests for the retrieval model and data: log-Q loss, towers, tf.data positives, resume, recall metrics."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ml.data import parquet, synthetic
from ml.data.schema import NUM_ACTION_TYPES
from ml.retrieval import data, model

WORLD = synthetic.SyntheticConfig(num_users=300, num_items=120, num_topics=6, seq_len=6, num_dense=4, seed=5)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    return (synthetic.generate_shards(folder, WORLD, 6000, 2, split="train", rows_per_group=1000),
            synthetic.generate_shards(folder, WORLD, 2000, 1, split="eval"))


def _cfg(**kw) -> model.RetrievalConfig:
    sizes = dict(num_users=WORLD.num_users, num_items=WORLD.num_items, seq_len=WORLD.seq_len,
                 context_cardinalities=WORLD.context_cardinalities, num_action_types=NUM_ACTION_TYPES, embed_dim=16,
                 tower_dims=(32, 16))
    return model.RetrievalConfig(**{**sizes, **kw})


def test_loss_matches_a_hand_computed_log_q_softmax():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4, 3)).astype(np.float32)
    i = rng.standard_normal((4, 3)).astype(np.float32)
    ids = np.array([5, 7, 5, 9])
    log_q = np.log(np.linspace(0.01, 0.2, 10)).astype(np.float32)
    got = float(model.in_batch_softmax_loss(tf.constant(q), tf.constant(i), tf.constant(ids), tf.constant(log_q), 0.5))
    logits = q @ i.T / 0.5 - log_q[ids][None, :]
    logits[0, 2] = logits[2, 0] = -1e9  # the same item (5) is not a negative of itself
    want = np.mean([np.log(np.exp(row).sum()) - row[r] for r, row in enumerate(logits)])
    assert got == pytest.approx(want, rel=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="tower_dims"):
        _cfg(tower_dims=())
    with pytest.raises(ValueError, match="temperature"):
        _cfg(temperature=0.0)
    with pytest.raises(ValueError, match="log_q"):
        model.TwoTower(_cfg(), log_q=np.zeros(3, np.float32))


def test_dataset_yields_the_clicks_of_each_reader_batch_and_resumes(shards):
    train, _ = shards
    spe = parquet.batches_per_epoch(train, 500, drop_last=True)
    kw = dict(seq_len=WORLD.seq_len, num_context=WORLD.num_categorical, seed=1, steps_per_epoch=spe)
    full = [b for b in data.train_dataset(train, 500, **kw).take(spe + 3).as_numpy_iterator()]
    reader = list(parquet.ParquetBatches(train, 500, seed=1, drop_last=True))
    for got, raw in zip(full[:spe], reader, strict=True):
        np.testing.assert_array_equal(got["item_id"], raw["item_id"][raw["click"] > 0.5])
    assert sum(len(b["item_id"]) for b in full[:spe]) > 0.05 * spe * 500  # clicks are not rare
    resumed = list(data.train_dataset(train, 500, start_epoch=0, skip_batches=spe - 2, **kw).take(5).as_numpy_iterator())
    for a, b in zip(full[spe - 2:], resumed, strict=True):
        for k in data.FEATURES:
            np.testing.assert_array_equal(a[k], b[k])


def test_recall_metrics():
    table = np.eye(5, dtype=np.float32)
    queries = np.array([[0, 0, 1, 0.5, 0], [0, 0.9, 0, 0, 1]], np.float32)
    assert data.recall_at_k(queries, table, np.array([2, 1]), [1, 2]) == {"recall@1": 0.5, "recall@2": 1.0}
    counts = np.array([0, 9, 1, 5, 0])
    assert data.popularity_recall(counts, np.array([1, 3, 2]), [1, 2]) == {"recall@1": 1 / 3, "recall@2": 2 / 3}


def test_a_few_fit_steps_beat_popularity_on_held_out_clicks(shards):
    train, evals = shards
    counts = data.item_click_counts(train, WORLD.num_items)
    keras_model = model.TwoTower(_cfg(), log_q=data.log_q(counts))
    import keras

    keras.utils.set_random_seed(0)
    keras_model.compile(optimizer=keras.optimizers.Adam(0.01))
    spe = parquet.batches_per_epoch(train, 256, drop_last=True)
    ds = data.train_dataset(train, 256, seq_len=WORLD.seq_len, num_context=WORLD.num_categorical, seed=0,
                            steps_per_epoch=spe)
    hist = keras_model.fit(ds, epochs=6, steps_per_epoch=spe, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    pairs = data.eval_pairs(evals)
    q = keras_model.query(*(pairs[k] for k in model.QUERY_INPUTS)).numpy()
    ours = data.recall_at_k(q, keras_model.item_table(), pairs["item_id"], [10])
    pop = data.popularity_recall(counts, pairs["item_id"], [10])
    assert ours["recall@10"] > pop["recall@10"], (ours, pop)
