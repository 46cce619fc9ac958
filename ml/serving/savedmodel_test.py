"""TensorFlow SavedModel bundles on the model server: written and verified file by file, golden-checked,
served next to TorchScript bundles over gRPC, and refused with a clear error (the other models serving on)
when the server cannot import TensorFlow or when the SavedModel's signature disagrees with bundle.json."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton

from ml.engine.tf.export import export_saved_model
from ml.serving import bundle, server
from ml.serving.testing import expected, inputs_for, make_bundle, rows

WEIGHTS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def make_tf_bundle(root: Path, name: str = "tfmodel", version: str = "1") -> Path:
    """A SavedModel (x float32 [B, 3], ids int64 [B, 2] -> scores float32 [B, 4], best int64 [B]) as a bundle."""
    holder = tf.Module()
    holder.w = tf.Variable(WEIGHTS)

    def fn(x, ids):
        scores = tf.matmul(x, holder.w) + tf.cast(tf.reduce_sum(ids, axis=1, keepdims=True), tf.float32)
        return {"scores": scores, "best": tf.argmax(scores, axis=1)}

    rng = np.random.default_rng(0)
    golden = {"x": rng.normal(size=(6, 3)).astype(np.float32), "ids": rng.integers(0, 5, (6, 2)).astype(np.int64)}
    export = root / f"export-{name}-{version}"
    export_saved_model(fn, golden, folder=export, trackable=holder)
    return bundle.write_bundle(export, root / name / version, name=name, version=version, label="//test:tf",
                               lock_digest="sha256:test", git_commit="test")


def tf_expected(x, ids):
    scores = x @ WEIGHTS + ids.sum(axis=1, keepdims=True).astype(np.float32)
    return scores, scores.argmax(axis=1)


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "bundle.json").read_text())
    change(manifest)
    (path / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_savedmodel_bundle_hashes_every_file_and_replays_its_golden_batch(tmp_path):
    out = make_tf_bundle(tmp_path)
    b = bundle.verify(out)
    m = b.manifest
    assert (m["framework"], m["artifact_format"], m["artifact"]) == ("tensorflow", "tf_saved_model", "model/saved_model")
    saved = {k for k in m["files"] if k.startswith("model/saved_model/")}
    on_disk = {p.relative_to(out).as_posix() for p in (out / "model/saved_model").rglob("*") if p.is_file()}
    assert saved == on_disk and "model/saved_model/saved_model.pb" in saved
    assert any(k.startswith("model/saved_model/variables/") for k in saved)
    assert bundle.check_golden(b) <= 1e-6
    model = bundle.load_model(b)
    assert model.platform == "tensorflow_savedmodel"
    x, ids = rows(5)[1], np.array([[1, 2]] * 5, np.int64)
    assert [t["name"] for t in b.signature["inputs"]] == ["x", "ids"]
    assert [t["name"] for t in b.signature["outputs"]] == ["best", "scores"]  # the export sorts output names
    best, scores = model.run([x, ids])
    want_scores, want_best = tf_expected(x, ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    np.testing.assert_array_equal(best, want_best)


@pytest.mark.parametrize("damage,message", [
    (lambda p: (p / "model/saved_model/variables/variables.data-00000-of-00001").write_bytes(b"x"),
     "model/saved_model/variables/variables.data-00000-of-00001 has sha256:"),
    (lambda p: (p / "model/saved_model/assets").mkdir(exist_ok=True) or (p / "model/saved_model/assets/x.txt").write_text("x"),
     "files not in bundle.json: model/saved_model/assets/x.txt"),
    (lambda p: (p / "model/saved_model/saved_model.pb").unlink(),
     "model/saved_model/saved_model.pb is listed in bundle.json but missing"),
    (lambda p: edit_manifest(p, lambda m: m["files"].pop("model/saved_model/saved_model.pb")),
     "is a tf_saved_model folder but 'files' lists no model/saved_model/saved_model.pb"),
    (lambda p: edit_manifest(p, lambda m: m.update(artifact="model/../../etc")),
     "'artifact' is 'model/../../etc'; every path a bundle names must be relative and inside"),
])
def test_savedmodel_tampering_is_caught_naming_the_file(tmp_path, damage, message):
    out = make_tf_bundle(tmp_path)
    damage(out)
    with pytest.raises(bundle.BundleError) as info:
        bundle.verify(out)
    assert message in str(info.value)


@pytest.mark.parametrize("change,message", [
    (lambda m: m["signature"]["inputs"][0].update(name="features"),
     "inputs are ['ids', 'x'] in the SavedModel but ['features', 'ids'] in bundle.json"),
    (lambda m: m["signature"]["outputs"][0].update(dtype="int32"),
     "output 'best' is int64[-1] in the SavedModel but int32[-1] in bundle.json"),
    (lambda m: m["signature"]["inputs"][0].update(shape=[-1, 5]),
     "input 'x' is float32[-1, 3] in the SavedModel but float32[-1, 5] in bundle.json"),
])
def test_signature_disagreeing_with_bundle_json_is_refused(tmp_path, change, message):
    out = make_tf_bundle(tmp_path)
    edit_manifest(out, change)  # bundle.json is not in its own hash list: a hand edit passes verify()
    b = bundle.verify(out)
    with pytest.raises(bundle.BundleError) as info:
        bundle.load_model(b)
    assert "the SavedModel's serving_default signature and bundle.json disagree" in str(info.value)
    assert message in str(info.value)


def test_same_export_gives_a_byte_identical_savedmodel_bundle(tmp_path):
    first = make_tf_bundle(tmp_path)
    again = bundle.write_bundle(tmp_path / "export-tfmodel-1", tmp_path / "again", name="tfmodel", version="1",
                                label="//test:tf", lock_digest="sha256:test", git_commit="test")
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again).as_posix() for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_savedmodel_and_torchscript_served_side_by_side_over_grpc(tmp_path):
    make_tf_bundle(tmp_path / "repo")
    make_bundle(tmp_path / "repo", name="tiny")
    bad = make_tf_bundle(tmp_path / "repo", name="tfbad")
    edit_manifest(bad, lambda m: m["signature"]["outputs"][1].update(name="score"))
    srv = server.start(repository_dir=tmp_path / "repo", port=0, metrics_port=None)
    try:
        assert srv.repository.names() == ["tfmodel", "tiny"]
        assert "the SavedModel's serving_default signature and bundle.json disagree: outputs are ['best', 'scores'] " \
               "in the SavedModel but ['best', 'score'] in bundle.json" in srv.repository.failed[str(bad)]
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
            assert client.get_model_metadata("tfmodel").platform == "tensorflow_savedmodel"
            x = rows(7)[1]
            ids = np.arange(14, dtype=np.int64).reshape(7, 2) % 5
            a, b = triton.InferInput("x", [7, 3], "FP32"), triton.InferInput("ids", [7, 2], "INT64")
            a.set_data_from_numpy(x)
            b.set_data_from_numpy(ids)
            got = client.infer("tfmodel", [a, b])
            want_scores, want_best = tf_expected(x, ids)
            np.testing.assert_allclose(got.as_numpy("scores"), want_scores, rtol=1e-6)
            np.testing.assert_array_equal(got.as_numpy("best"), want_best)
            r_ids, r_dense = rows(4)
            np.testing.assert_allclose(client.infer("tiny", inputs_for(r_ids, r_dense)).as_numpy("score"),
                                       expected(r_ids, r_dense)[0], rtol=1e-6)
    finally:
        srv.stop(1)


# A server process in which `import tensorflow` fails as it would in an environment without it.
NO_TENSORFLOW = """
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTensorFlow())
from ml.serving.server import main
sys.exit(main(sys.argv[1:]))
"""


def server_without_tensorflow(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen([sys.executable, "-c", NO_TENSORFLOW, "--port=0", "--metrics-port=-1", *args],
                            env=env, stderr=subprocess.PIPE, text=True)


def test_server_without_tensorflow_refuses_the_savedmodel_and_keeps_serving_the_rest(tmp_path):
    repo = tmp_path / "repo"
    make_tf_bundle(repo)
    make_bundle(repo, name="tiny")
    proc = server_without_tensorflow(f"--repository={repo}")
    log = []
    try:
        deadline = time.monotonic() + 120
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log.append(line)
            found = re.search(r"^serving .* on 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port is not None, "".join(log)
        text = "".join(log)
        assert re.search(r"refused .*tfmodel/1: .*tfmodel/1: this bundle is a TensorFlow SavedModel, but this server cannot "
                         r"import TensorFlow \(No module named 'tensorflow'\)", text), text
        assert "serving tiny (versions 1)" in text, text
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert not client.is_model_ready("tfmodel")
            r_ids, r_dense = rows(3)
            np.testing.assert_allclose(client.infer("tiny", inputs_for(r_ids, r_dense)).as_numpy("score"),
                                       expected(r_ids, r_dense)[0], rtol=1e-6)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, "".join(log) + rest


def test_server_without_tensorflow_given_a_savedmodel_bundle_exits_saying_why(tmp_path):
    proc = server_without_tensorflow(f"--bundle={make_tf_bundle(tmp_path)}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert re.search(r"serve: error: \S+/tfmodel/1: this bundle is a TensorFlow SavedModel, but this server cannot "
                     r"import TensorFlow \(No module named 'tensorflow'\): serve it from", err), err
    assert "Traceback" not in err


def test_bundle_time_golden_check_refuses_an_export_that_disagrees_with_its_golden_batch(tmp_path, capsys):
    from ml.serving import make_bundle

    make_tf_bundle(tmp_path)  # leaves the export folder next to the bundle
    export = tmp_path / "export-tfmodel-1"
    with np.load(export / "golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.scores"] = arrays["output.scores"] + 0.5
    np.savez(export / "golden.npz", **arrays)
    out = tmp_path / "bundle"
    assert make_bundle.main(["--export-dir", str(export), "--out", str(out), "--name", "tfmodel", "--version", "2"]) == 1
    assert "output scores differs from the golden outputs by 0.5" in capsys.readouterr().err
    assert not out.exists()  # nothing half-checked left where a bundle is expected
    before = (tmp_path / "tfmodel/1/bundle.json").read_bytes()
    assert make_bundle.main(["--export-dir", str(export), "--out", str(tmp_path / "tfmodel/1"), "--name", "tfmodel",
                             "--version", "1"]) == 1  # the same refusal over a good bundle: which stays as it was
    assert (tmp_path / "tfmodel/1/bundle.json").read_bytes() == before
    bundle.verify(tmp_path / "tfmodel/1")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging folder left
