"""Tests for __project__'s Keras model: shapes, gradients everywhere, and that it learns the synthetic data."""

import keras
import numpy as np
import tensorflow as tf

from ml.__project__ import data, model
from ml.engine.metrics import roc_auc


def _model() -> model.ClickModel:
    keras.utils.set_random_seed(0)
    return model.ClickModel(data.CARDINALITIES, data.NUM_DENSE, embed_dim=8, hidden=(32,))


def _inputs(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"cat": rows["cat"], "dense": rows["dense"]}


def test_shapes_and_gradients():
    net = _model()
    rows = data.generate(64, split="train")
    with tf.GradientTape() as tape:
        logit = net(_inputs(rows), training=True)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=rows["label"], logits=logit))
    assert logit.shape == (64,) and logit.dtype == tf.float32
    grads = tape.gradient(loss, net.trainable_variables)
    assert grads and all(g is not None and bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(g))))
                         for g in grads)


def test_learns_better_than_chance():
    net = _model()
    net.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    rows = data.generate(8192, split="train")
    net.fit(_inputs(rows), rows["label"], batch_size=256, epochs=3, verbose=0, shuffle=False)
    held_out = data.generate(2048, split="eval")
    scores = keras.ops.convert_to_numpy(net(_inputs(held_out)))
    assert roc_auc(held_out["label"], scores) > 0.7
