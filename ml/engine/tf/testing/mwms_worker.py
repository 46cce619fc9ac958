"""One worker of the multi-worker test: strategy from the torchrun-style env, a custom strategy.run loop.

Run by multiworker_test.py (two copies, RANK 0 and 1, inside a private network namespace). Prints one JSON
line: rank, the initial weights, the global loss of each step and the final weights.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import tensorflow as tf

from ml.engine.tf import strategy

ROWS, STEPS = 8, 3


def main() -> None:
    strat, penv = strategy.select_strategy()
    assert isinstance(strat, tf.distribute.MultiWorkerMirroredStrategy), type(strat)
    assert not strategy.fit_supported(strat)
    with strat.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)
    initial = [w.tolist() for w in model.get_weights()]
    rng = np.random.default_rng(penv.rank)  # each rank holds its own shard of the global batch
    x = rng.standard_normal((ROWS, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    global_batch = ROWS * penv.world_size

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per_row = tf.reduce_sum((model(x) - y) ** 2, axis=1)
                loss = tf.nn.compute_average_loss(per_row, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        per = strat.run(replica, args=(x, y))
        return strat.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

    losses = [float(step(tf.constant(x), tf.constant(y))) for _ in range(STEPS)]
    strategy.barrier(strat)()
    print("RESULT " + json.dumps({"rank": penv.rank, "initial": initial, "losses": losses,
                                  "final": [w.tolist() for w in model.get_weights()]}), flush=True)


if __name__ == "__main__":
    main()
