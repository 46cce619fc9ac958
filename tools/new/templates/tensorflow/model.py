"""__project__'s model in Keras 3: embeddings of the categorical fields + dense features into an MLP.

Native Keras: imports nothing from the engine. Inputs are a dict {"cat": int64 [B, fields], "dense": float32
[B, NUM_DENSE]}; the output is one click logit per row, float32 whatever the dtype policy.
"""

from __future__ import annotations

import keras

__all__ = ["ClickModel"]


class ClickModel(keras.Model):
    """P(click) from categorical ids and dense features."""

    def __init__(self, cardinalities: tuple[int, ...], num_dense: int, *, embed_dim: int = 16,
                 hidden: tuple[int, ...] = (64, 32), dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_dense = num_dense
        self.tables = [keras.layers.Embedding(n, embed_dim, name=f"field_{i}") for i, n in enumerate(cardinalities)]
        self.hidden_layers = [keras.layers.Dense(width, activation="relu") for width in hidden]
        self.dropout = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(1)

    def call(self, inputs, training=False):
        cat, dense = inputs["cat"], inputs["dense"]
        parts = [table(cat[:, i]) for i, table in enumerate(self.tables)]
        x = keras.ops.concatenate([*parts, keras.ops.cast(dense, parts[0].dtype)], axis=1)
        for layer in self.hidden_layers:
            x = self.dropout(layer(x), training=training)
        return keras.ops.cast(keras.ops.squeeze(self.head(x), axis=1), "float32")
