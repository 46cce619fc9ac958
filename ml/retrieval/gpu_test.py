"""retrieval on the accelerator: fit steps in float32 and mixed_bfloat16, and a SavedModel export, on the
device TensorFlow places them on.

`gpu_test` runs under --config=gpu (GPU locked, environment gate run); `gpu_test_cpu` runs the same file on CPU
in the default suite. What the GPU twin can and cannot test: both locks ship tensorflow-cpu (a CUDA TensorFlow
wheel would bring a second copy of the CUDA libraries next to torch's), so under --config=gpu TensorFlow sees
no GPU and these steps run on the CPU of the GPU machine. The twin then checks that this is why (a
CPU-only TensorFlow build, not a CUDA build that failed to find the device) and that the precision check
refuses mixed_float16 there with a clear error; it cannot test Keras kernels on a GPU. A CUDA TensorFlow in
a lock turns the same file into a real GPU test: it then requires TensorFlow to see the GPU.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml.data import parquet, synthetic
from ml.data.schema import NUM_ACTION_TYPES
from ml.engine.errors import PrecisionError
from ml.engine.tf import export, precision
from ml.retrieval import data, model

WANT = os.environ.get("MLENV_TEST_DEVICE", "cuda")
WORLD = synthetic.SyntheticConfig(num_users=300, num_items=120, seq_len=6, seed=3)


def tf_device() -> str:
    """The TensorFlow device this run tests, after checking it is the one it should be."""
    gpus = tf.config.list_physical_devices("GPU")
    if WANT == "cpu":
        return "/CPU:0"
    if gpus:
        return "/GPU:0"
    assert not tf.test.is_built_with_cuda(), (
        "TensorFlow is built with CUDA but sees no GPU under --config=gpu: the driver or CUDA libraries are not "
        "usable by it (run //toolchains/cuda:check)")
    print("gpu_test: the lock's TensorFlow is tensorflow-cpu, so Keras runs on this machine's CPU; the GPU is "
          "not exercised by TensorFlow")
    return "/CPU:0"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    return synthetic.generate_shards(folder, WORLD, 3000, 1, split="train")


def fit(shards, steps: int) -> tuple[model.TwoTower, list[float]]:
    counts = data.item_click_counts(shards, WORLD.num_items)
    keras.utils.set_random_seed(0)
    cfg = model.RetrievalConfig(num_users=WORLD.num_users, num_items=WORLD.num_items, seq_len=WORLD.seq_len,
                                context_cardinalities=WORLD.context_cardinalities, num_action_types=NUM_ACTION_TYPES,
                                embed_dim=16, tower_dims=(32, 16))
    net = model.TwoTower(cfg, log_q=data.log_q(counts))
    net.compile(optimizer=keras.optimizers.Adam(0.01))
    spe = parquet.batches_per_epoch(shards, 256, drop_last=True)
    ds = data.train_dataset(shards, 256, seq_len=WORLD.seq_len, num_context=WORLD.num_categorical, seed=0,
                            steps_per_epoch=spe)
    with tf.device(tf_device()):
        hist = net.fit(ds, epochs=1, steps_per_epoch=min(steps, spe), verbose=0)
    return net, hist.history["loss"]


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fit_steps_on_device(shards, policy):
    try:
        precision.set_precision(policy)
        net, loss = fit(shards, 8)
        assert np.isfinite(loss).all(), loss
        assert net.item_emb.embeddings.dtype == "float32"  # master weights stay float32 under mixed precision
        if policy == "mixed_bfloat16":
            assert net.query_mlp.layers[0].compute_dtype == "bfloat16"
    finally:
        precision.set_precision("float32")


def test_mixed_float16_needs_a_gpu_that_tensorflow_sees():
    if tf.config.list_physical_devices("GPU"):
        assert precision.set_precision("mixed_float16") == "mixed_float16"
        precision.set_precision("float32")
    else:
        with pytest.raises(PrecisionError, match="mixed_float16 needs a CUDA GPU and none is visible"):
            precision.set_precision("mixed_float16")


def test_savedmodel_export_from_the_device_model(shards, tmp_path):
    net, _ = fit(shards, 2)
    pairs = data.eval_pairs(shards, limit=8)
    golden = {k: pairs[k] for k in model.QUERY_INPUTS}

    def serve(user_id, hist_items, hist_actions, context):
        return {"query_embedding": net.query(user_id, hist_items, hist_actions, context)}

    result = export.export_saved_model(serve, golden, folder=tmp_path / "export", trackable=net, atol=1e-4)
    assert result.max_abs_diff <= 1e-4
    assert [s["name"] for s in result.signature["outputs"]] == ["query_embedding"]
