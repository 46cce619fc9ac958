"""Tests for the TensorFlow adapter: strategy env, precision checks, exact checkpoint resume, SavedModel export."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml.engine.errors import CheckpointError, DistributedError, ExportError, PrecisionError
from ml.engine.tf import checkpoint, export, precision, strategy

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_adapter_never_imports_torch():
    assert "torch" not in sys.modules


def test_pytorch_project_never_imports_tensorflow():
    code = ("import sys, ml.homefeed.train\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'a torch project imported TF'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tf_config_from_torchrun_env():
    penv = strategy.process_env(TORCHRUN)
    assert (penv.rank, penv.world_size) == (1, 2)
    cfg = json.loads(strategy.tf_config(penv))
    assert cfg == {"cluster": {"worker": ["127.0.0.1:29501", "127.0.0.1:29502"]}, "task": {"type": "worker", "index": 1}}
    listed = strategy.process_env({**TORCHRUN, "LOCAL_WORLD_SIZE": "1", "MLENV_TF_WORKERS": "a:1,b:2"})
    assert listed.workers == ("a:1", "b:2")
    assert strategy.process_env({}).world_size == 1


@pytest.mark.parametrize("env,match", [
    ({**TORCHRUN, "RANK": "2"}, "RANK"),
    ({**TORCHRUN, "MASTER_ADDR": ""}, "MASTER_ADDR"),
    ({**TORCHRUN, "WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({**TORCHRUN, "LOCAL_WORLD_SIZE": "1"}, "MLENV_TF_WORKERS"),
    ({**TORCHRUN, "MLENV_TF_WORKERS": "a:1"}, "exactly WORLD_SIZE"),
])
def test_bad_launcher_env_is_named(env, match):
    with pytest.raises(DistributedError, match=match):
        strategy.process_env(env)


def test_one_process_gets_the_default_strategy_and_fit():
    strat, penv = strategy.select_strategy({})
    assert penv.world_size == 1 and strategy.fit_supported(strat)
    strategy.barrier(strat)()


def test_precision_checks():
    with pytest.raises(PrecisionError, match="one of"):
        precision.set_precision("fp8")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(PrecisionError, match="mixed_float16 needs a CUDA GPU"):
            precision.set_precision("mixed_float16")
    try:
        assert precision.set_precision("mixed_bfloat16") == "mixed_bfloat16"
        layer = keras.layers.Dense(2)
        out = layer(np.ones((1, 3), np.float32))
        assert out.dtype == "bfloat16" and layer.kernel.dtype == "float32"
    finally:
        precision.set_precision("float32")


def test_precision_refused_on_a_gpu_without_the_hardware(monkeypatch):
    """A GPU older than the policy needs (here a T4-class 7.5 for bfloat16) is refused before any step, naming
    the device, what it has and what to use; the global policy is left as it was. The GPU is described to the
    check through TensorFlow's device query (no such GPU exists here); the check itself runs unchanged."""
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"compute_capability": (7, 5)})
    before = keras.mixed_precision.global_policy().name
    with pytest.raises(PrecisionError, match=r"mixed_bfloat16 needs GPU compute capability >= 8.0; "
                                             r"/physical_device:GPU:0 has 7.5: use float32"):
        precision.set_precision("mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == before
    assert precision.set_precision("mixed_float16") == "mixed_float16"  # 7.5 has float16 tensor cores
    precision.set_precision("float32")


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])


def _data(n: int = 64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x @ np.arange(1, 5, dtype=np.float32))[:, None]


def _train(model, opt, x, y, steps: range):
    for i in steps:
        xb, yb = x[i % 8 * 8:(i % 8 + 1) * 8], y[i % 8 * 8:(i % 8 + 1) * 8]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xb) - yb) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True))


def test_checkpoint_resume_is_exact(tmp_path):
    x, y = _data()
    ref, ref_opt = _model(1), keras.optimizers.Adam(0.01)
    _train(ref, ref_opt, x, y, range(10))

    a, a_opt = _model(1), keras.optimizers.Adam(0.01)
    ck = checkpoint.KerasCheckpoint(a, a_opt, steps_per_epoch=4)
    for i in range(6):
        _train(a, a_opt, x, y, range(i, i + 1))
        ck.advance()
    assert ck.position == checkpoint.DataPosition(epoch=1, batch_in_epoch=2, global_step=6)
    ck.save(tmp_path / "c")

    b, b_opt = _model(99), keras.optimizers.Adam(0.01)  # other init: restore must overwrite everything
    ck_b = checkpoint.KerasCheckpoint(b, b_opt, steps_per_epoch=4)
    assert ck_b.restore(tmp_path / "c") == checkpoint.DataPosition(1, 2, 6)
    _train(b, b_opt, x, y, range(6, 10))
    for w_ref, w_b in zip(ref.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(w_ref, w_b)
    assert int(b_opt.iterations.numpy()) == 10


def test_checkpoint_errors_name_the_fix(tmp_path):
    m = _model(0)
    ck = checkpoint.KerasCheckpoint(m, keras.optimizers.SGD(), steps_per_epoch=2)
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        ck.restore(tmp_path)
    ck.save(tmp_path / "small")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    with pytest.raises(CheckpointError, match="does not fit"):
        checkpoint.KerasCheckpoint(other, keras.optimizers.SGD(), steps_per_epoch=2).restore(tmp_path / "small")


def test_saved_model_export_round_trip_and_signature_check(tmp_path):
    model = _model(3)
    x, _ = _data(16)
    ids = np.arange(16, dtype=np.int64)

    def serve(features, ids):
        return {"score": model(features)[:, 0], "id_twice": ids * 2}

    res = export.export_saved_model(serve, {"features": x, "ids": ids}, folder=tmp_path / "e", trackable=model)
    assert res.max_abs_diff <= 1e-5
    sig = json.loads((tmp_path / "e" / "signature.json").read_text())
    assert sig["inputs"] == [{"name": "features", "dtype": "float32", "shape": [-1, 4]},
                             {"name": "ids", "dtype": "int64", "shape": [-1]}]
    assert [o["name"] for o in sig["outputs"]] == ["id_twice", "score"]
    _, fn = export.load_saved_model(tmp_path / "e")
    np.testing.assert_allclose(fn(features=x[:3], ids=ids[:3])["score"].numpy(), model(x[:3]).numpy()[:, 0], atol=1e-6)
    with np.load(tmp_path / "e" / "golden.npz", allow_pickle=False) as g:
        np.testing.assert_array_equal(g["output.id_twice"], ids * 2)

    sig["inputs"][0]["dtype"] = "float64"
    (tmp_path / "e" / "signature.json").write_text(json.dumps(sig))
    with pytest.raises(ExportError, match=r"input .features. is float32\[-1, 4\] in the SavedModel but float64"):
        export.load_saved_model(tmp_path / "e")
    with pytest.raises(ExportError, match="batch size >= 2"):
        export.export_saved_model(serve, {"features": x[:1], "ids": ids[:1]}, folder=tmp_path / "f", trackable=model)


def test_bfloat16_outputs_are_exported_as_float32(tmp_path):
    try:
        precision.set_precision("mixed_bfloat16")
        model = _model(4)
    finally:
        precision.set_precision("float32")
    x, _ = _data(8)
    res = export.export_saved_model(lambda features: {"y": model(features)}, {"features": x}, folder=tmp_path,
                                    trackable=model)
    assert res.signature["outputs"] == [{"name": "y", "dtype": "float32", "shape": [-1, 1]}]
