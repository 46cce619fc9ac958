"""Two-tower candidate retrieval in Keras 3 (TensorFlow backend): query tower, item tower, log-Q softmax.

Why two towers: retrieval must score every item for a user in one matrix product, so the user side (id,
recent items weighted by what the user did with them, context) and the item side are encoded separately
into one L2-normalised space; the item table is precomputed for serving and a query is one forward pass.

Loss: in-batch sampled softmax. Each clicked (query, item) pair in a batch is a positive; the other items of
the batch are the negatives. Because those negatives are drawn in proportion to how often items are clicked,
popular items are over-penalised; subtracting log Q(item) (its sampling probability, estimated from the
training clicks) from every logit corrects that bias (Yi et al., "Sampling-bias-corrected neural modeling",
RecSys 2019). Other rows holding the same positive item are masked so an item is never its own negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

__all__ = ["QUERY_INPUTS", "RetrievalConfig", "TwoTower", "in_batch_softmax_loss"]

# Names (and order) of the query tower's inputs: the SavedModel signature and the bundle use them.
QUERY_INPUTS = ("user_id", "hist_items", "hist_actions", "context")


@dataclass(frozen=True)
class RetrievalConfig:
    """Sizes of the two towers (ids are 1-based; 0 is padding/unknown)."""

    num_users: int
    num_items: int
    seq_len: int
    context_cardinalities: tuple[int, ...]
    num_action_types: int = 4
    embed_dim: int = 32
    tower_dims: tuple[int, ...] = (64, 32)
    temperature: float = 0.05

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "seq_len", "num_action_types", "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tower_dims or min(self.tower_dims) < 1:
            raise ValueError(f"tower_dims must be positive widths, e.g. 64,32; got {self.tower_dims}")
        if not self.context_cardinalities or min(self.context_cardinalities) < 1:
            raise ValueError(f"context_cardinalities must be positive, got {self.context_cardinalities}")
        if not 0 < self.temperature <= 10:
            raise ValueError(f"temperature must be in (0, 10], got {self.temperature}")


def _mlp(dims: tuple[int, ...], name: str) -> keras.Sequential:
    layers = [keras.layers.Dense(d, activation="relu", name=f"{name}_{i}") for i, d in enumerate(dims[:-1])]
    layers.append(keras.layers.Dense(dims[-1], name=f"{name}_out"))
    return keras.Sequential(layers, name=name)


class TwoTower(keras.Model):
    """Query and item towers sharing the item-id embedding; trained with :func:`in_batch_softmax_loss`.

    ``log_q`` holds log Q(item) for ids 0..num_items (see the module docstring); it is a constant of the
    training data, stored as a non-trainable weight so checkpoints and exports carry it.
    """

    def __init__(self, cfg: RetrievalConfig, log_q: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        e = cfg.embed_dim
        self.item_emb = keras.layers.Embedding(cfg.num_items + 1, e, name="item_emb")
        self.user_emb = keras.layers.Embedding(cfg.num_users + 1, e, name="user_emb")
        self.action_emb = keras.layers.Embedding(cfg.num_action_types, e, name="action_emb")
        self.recency = self.add_weight(shape=(cfg.seq_len, 1), initializer="zeros", name="recency")
        self.context_embs = [keras.layers.Embedding(c, e, name=f"context_emb_{j}")
                             for j, c in enumerate(cfg.context_cardinalities)]
        self.query_mlp = _mlp(tuple(cfg.tower_dims), "query_mlp")
        self.item_mlp = _mlp(tuple(cfg.tower_dims), "item_mlp")
        if log_q is None:
            log_q = np.full(cfg.num_items + 1, -np.log(cfg.num_items), np.float32)
        if np.shape(log_q) != (cfg.num_items + 1,):
            raise ValueError(f"log_q must have num_items + 1 = {cfg.num_items + 1} entries, got {np.shape(log_q)}")
        self.log_q = self.add_weight(shape=(cfg.num_items + 1,), initializer=keras.initializers.Constant(log_q),
                                     trainable=False, name="log_q")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def query(self, user_id, hist_items, hist_actions, context):
        """L2-normalised query embeddings (batch, tower_dims[-1])."""
        tokens = self.item_emb(hist_items) * (1.0 + self.action_emb(hist_actions))
        mask = keras.ops.cast(keras.ops.expand_dims(hist_items > 0, -1), tokens.dtype)
        weights = mask * keras.ops.cast(keras.ops.exp(self.recency), tokens.dtype)
        pooled = keras.ops.sum(tokens * weights, axis=1) / (keras.ops.sum(weights, axis=1) + 1e-6)
        ctx = [emb(context[:, j]) for j, emb in enumerate(self.context_embs)]
        x = keras.ops.concatenate([self.user_emb(user_id), pooled, *ctx], axis=-1)
        return _l2(self.query_mlp(x))

    def item(self, item_id):
        """L2-normalised item embeddings (batch, tower_dims[-1])."""
        return _l2(self.item_mlp(self.item_emb(item_id)))

    def call(self, inputs):
        q = self.query(*(inputs[k] for k in QUERY_INPUTS))
        return q, self.item(inputs["item_id"])

    def train_step(self, data):
        with tf.GradientTape() as tape:
            q, i = self(data, training=True)
            loss = in_batch_softmax_loss(q, i, data["item_id"], self.log_q, self.cfg.temperature)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        self.loss_tracker.update_state(loss)
        # Batch logs carry this batch's loss (what the run logs per step); Keras reports the tracker's epoch
        # mean in the epoch logs and History, because the keys match `metrics`.
        return {"loss": loss}

    @property
    def metrics(self):
        return [self.loss_tracker]

    def item_table(self, batch: int = 4096) -> np.ndarray:
        """Embeddings of every item id 0..num_items (row 0 is padding, never retrieved), float32."""
        ids = np.arange(self.cfg.num_items + 1, dtype=np.int64)
        return np.concatenate([keras.ops.convert_to_numpy(keras.ops.cast(self.item(ids[s:s + batch]), "float32"))
                               for s in range(0, len(ids), batch)])


def _l2(x):
    x = keras.ops.cast(x, "float32")
    return x / (keras.ops.sqrt(keras.ops.sum(x * x, axis=-1, keepdims=True)) + 1e-6)


def in_batch_softmax_loss(q, i, item_ids, log_q, temperature: float):
    """Mean cross-entropy of each query against every item of the batch, its own item the target.

    logits[a, b] = <q_a, i_b> / T - log Q(item_b); entries where item_b equals a's positive (b != a) are
    masked so a duplicate of the positive is never pushed away.
    """
    logits = tf.matmul(q, i, transpose_b=True) / temperature
    logits -= tf.gather(log_q, item_ids)[tf.newaxis, :]
    n = tf.shape(item_ids)[0]
    eye = tf.eye(n, dtype=tf.bool)
    dup = tf.equal(item_ids[:, tf.newaxis], item_ids[tf.newaxis, :]) & ~eye
    logits = tf.where(dup, tf.constant(-1e9, logits.dtype), logits)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.range(n), logits=logits)
    return tf.reduce_mean(loss)
