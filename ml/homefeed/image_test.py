"""The homefeed images, run for real: podman (runc) here, docker where a daemon exists, chroot as a last resort.

- the serve image (loaded from its tarball, as `podman load` / `docker load` users do) answers tritonclient
  on the golden inputs with the golden outputs, exports metrics, and drains on SIGTERM;
- the train image (loaded from its OCI layout; it shares base, environment and app layers with serve)
  trains a few steps into a mounted workspace and exports a model;
- both images carry the Bazel label, lock digest and git commit as labels, and differ only in the model
  layer and the config;
- a corrupted blob and a wrong digest pin are caught by verify with a message naming the broken piece.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from ml.serving import bundle, server
from tools.rules.private import oci
from tools.testing import containers

PKG = Path("ml/homefeed")
SERVE_TAR = PKG / "serve_image.tar"
SERVE_LAYOUT = PKG / "serve_image"
TRAIN_LAYOUT = PKG / "train_image"
BUNDLE = PKG / "bundle"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layers(name: str) -> list[dict]:
    return json.loads((PKG / f"{name}.layers.json").read_text())["layers"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    try:
        r = containers.pick_runner(tmp_path_factory.mktemp("containers"))
    except containers.Unavailable as exc:
        pytest.skip(str(exc))
    yield r
    r.cleanup()


def test_images_share_every_layer_but_the_model():
    train, serve = layers("train_image"), layers("serve_image")
    assert [layer["name"] for layer in train] == ["base", "environment", "app"]
    assert [layer["name"] for layer in serve] == ["base", "environment", "app", "model"]
    assert [layer["diff_id"] for layer in serve[:3]] == [layer["diff_id"] for layer in train]


def test_image_labels_carry_provenance():
    _, manifest, _ = oci.read_layout(SERVE_LAYOUT)
    config = json.loads(oci.blob_path(SERVE_LAYOUT, manifest["config"]["digest"]).read_bytes())
    labels = config["config"]["Labels"]
    assert labels["dev.mlenv.bazel.label"] == "//ml/homefeed:serve_image"
    assert labels["dev.mlenv.lock.digest"] == bundle.verify(BUNDLE).manifest["lock_digest"]
    assert labels["dev.mlenv.git.commit"] and labels["dev.mlenv.git.commit"] != "unknown"
    assert config["config"]["User"] == "65532:65532"


def test_serve_image_answers_tritonclient_with_the_golden_outputs(runner):
    image = runner.load(SERVE_TAR)
    port, metrics = free_port(), free_port()
    name = f"mlenv-serve-{port}"
    log = open(Path(os.environ["TEST_TMPDIR"]) / "serve.log", "w+")  # noqa: SIM115 - the server writes it until stopped
    proc = runner.run(image, ["--repository=/models", "--host=127.0.0.1", f"--port={port}", f"--metrics-port={metrics}"],
                      name=name, stdout=log, stderr=subprocess.STDOUT)
    try:
        b = bundle.verify(BUNDLE)
        inputs, expected = bundle.golden_arrays(b)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, "the serve container exited early:\n" + Path(log.name).read_text()[-3000:]
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet: any client error means "not yet"
                pass
            assert time.monotonic() < deadline, "server not ready in 240 s:\n" + Path(log.name).read_text()[-3000:]
            time.sleep(0.5)
        assert client.is_model_ready("homefeed", "1")
        request = []
        for spec, array in zip(b.signature["inputs"], inputs, strict=True):
            tensor = triton.InferInput(spec["name"], list(array.shape), server.TORCH_TO_OIP[spec["dtype"]])
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        result = client.infer("homefeed", request)
        for spec, want in zip(b.signature["outputs"], expected, strict=True):
            np.testing.assert_allclose(result.as_numpy(spec["name"]), want, rtol=0, atol=1e-5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        assert 'model="homefeed"' in text
        client.close()
    finally:
        code = runner.stop(proc, name=name, timeout=30)
    logs = Path(log.name).read_text()
    assert "draining" in logs and code == 0, logs[-3000:]


def test_train_image_trains_a_few_steps(runner, tmp_path):
    image = runner.load(TRAIN_LAYOUT)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chmod(workspace, 0o777)  # the image runs as uid 65532
    out = runner.run(image, ["--max-steps=4", "--batch-size=32", "--set=train_samples=512", "--set=eval_samples=128",
                             "--set=num_shards=1", "--set=run_name=image-test"],
                     volumes={workspace: "/workspace"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs, _ = out.communicate(timeout=600)
    assert out.returncode == 0, logs[-3000:]
    run = workspace / ".mlenv/runs/homefeed/image-test"
    result = json.loads((run / "result.json").read_text())
    assert result["global_step"] == 4
    assert (run / "export" / "model.pt").is_file()
    assert "done at step 4" in logs


def test_verify_names_a_corrupted_blob_and_a_wrong_digest(tmp_path):
    copy = tmp_path / "layout"
    shutil.copytree(SERVE_LAYOUT.resolve(), copy, copy_function=os.symlink)  # blobs are GBs: link, then replace one
    app = next(layer for layer in layers("serve_image") if layer["name"] == "app")
    blob = oci.blob_path(copy, app["diff_id"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.unlink()
    blob.write_bytes(bytes(data))
    with pytest.raises(oci.OciError, match=r"layer 2 \(app\) blob sha256:[0-9a-f]+ is corrupt"):
        oci.verify_layout(copy)
    with pytest.raises(oci.OciError, match="expected sha256:0000"):
        oci.verify_layout(SERVE_LAYOUT, "sha256:" + "0" * 64)
    digest = (PKG / "serve_image.digest").read_text().strip()
    assert oci.verify_layout(SERVE_LAYOUT, digest)["manifest_digest"] == digest
