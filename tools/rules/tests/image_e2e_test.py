"""ml_image through real Bazel: two clean builds in two different places give the same image digest.

Two sample workspaces with identical sources but different absolute paths and different output bases each
build a small `ml_image` (a tiny base tar, a tiny stand-in environment through python_env_layer, the app
layer of a real py_binary, a model layer from a real ml_model_bundle over a tiny checked-in export).
Everything that could leak the build's location (byte code embedding paths, tar metadata, hard links,
timestamps) would show up as a different digest. Also: a bad ml_image call fails naming the fix.
"""

import json
import shutil
from pathlib import Path

import pytest

from ml.engine.export import export_model
from ml.serving.testing import TinyRanker, example_inputs
from tools.rules.private import oci
from tools.testing.bazel_workspace import SampleWorkspace, runfiles_repo

COPY = ["WORKSPACE", ".bazelrc", "ci/bazelrc", "tools/workspace_status.sh", "tools/rules", "toolchains", "third_party/pip",
        "third_party/debian", "ml/serving", "ml/engine", "tools/lint"]

SAMPLE_BUILD = '''
load("//tools/rules:bundle.bzl", "ml_model_bundle")
load("//tools/rules:image.bzl", "ml_image", "python_env_layer")
load("//tools/rules:python.bzl", "ml_py_binary", "ml_py_library")

ml_py_library(
    name = "fake_env",
    data = ["site-packages"],
)

python_env_layer(
    name = "env_layer",
    env = ":fake_env",
)

ml_py_binary(
    name = "train",
    srcs = ["train.py"],
    data = ["config.json"],
    main = "train.py",
)

ml_py_binary(
    name = "serve",
    srcs = ["serve.py"],
    main = "serve.py",
)

ml_model_bundle(
    name = "bundle",
    export = "export",
    model_name = "tiny",
)

ml_image(
    name = "images",
    base = "base.tar",
    bundle = ":bundle",
    env_layer = ":env_layer",
    serve = ":serve",
    train = ":train",
)
'''


def make_sample(root: Path, export: Path) -> SampleWorkspace:
    ws = SampleWorkspace.create(root)
    for relative in COPY:
        ws.copy_in(relative)
    shutil.rmtree(ws.root / "tools/rules/tests", ignore_errors=True)
    ws.write("sample/BUILD.bazel", SAMPLE_BUILD)
    ws.write("sample/train.py", "import json\nprint(json.load(open('sample/config.json')))\n")
    ws.write("sample/config.json", '{"lr": 0.1}\n')
    ws.write("sample/serve.py", "print('serving')\n")
    ws.write("sample/site-packages/tinylib/__init__.py", "VALUE = 42\n\ndef f():\n    return VALUE\n")
    ws.write("sample/site-packages/tinylib/sub/mod.py", "import os\nHERE = os.path.dirname(__file__)\n")
    ws.write("sample/site-packages/tinylib-1.0.dist-info/METADATA", "Name: tinylib\nVersion: 1.0\n")
    shutil.copytree(export, ws.root / "sample/export")
    base = [oci.Entry("etc/os-release", "file", data=b"ID=tiny\n"), oci.Entry("usr/bin", "dir", mode=0o755)]
    oci.write_layer(base, ws.root / "sample/base.tar")
    pypi = (runfiles_repo("pypi") / "site-packages").resolve().parent
    ws.write(".bazelrc.user", f"build --override_repository=pypi={pypi}\n")
    return ws


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    # A tiny export the bundle rule accepts, made once by the engine's real exporter; both samples copy it.
    export = tmp_path_factory.mktemp("export") / "export"
    export_model(TinyRanker(), example_inputs(), input_names=["ids", "dense"], output_names=["score", "prob"],
                 folder=export)
    a = make_sample(tmp_path_factory.mktemp("a") / "ws", export)
    b = make_sample(tmp_path_factory.mktemp("b_somewhere_else") / "nested" / "ws", export)
    yield a, b
    a.shutdown()
    b.shutdown()


def test_two_clean_builds_give_identical_images(samples):
    results = {}
    for ws in samples:
        r = ws.bazel("build", "//sample:images", "//sample:serve_image.tar")
        assert r.returncode == 0, r.stderr[-6000:]
        out = ws.root / "bazel-bin/sample"
        results[ws.root] = {
            "train": (out / "train_image.digest").read_text(),
            "serve": (out / "serve_image.digest").read_text(),
            "serve_layers": json.loads((out / "serve_image.layers.json").read_text())["layers"],
            "tar": oci._sha256_file(out / "serve_image.tar"),
        }
        oci.verify_layout(out / "serve_image")
        oci.verify_tarball(out / "serve_image.tar")
    first, second = results.values()
    assert first == second
    names = [layer["name"] for layer in first["serve_layers"]]
    assert names == ["base", "environment", "app", "model"]


def test_env_layer_holds_byte_code_compiled_for_its_image_path(samples):
    import tarfile

    tar_path = samples[0].root / "bazel-bin/sample/env_layer.tar"
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        assert "opt/mlenv/site-packages/tinylib/__pycache__/__init__.cpython-311.pyc" in names
        assert "opt/mlenv/lock_digest.txt" in names
        pyc = tar.extractfile("opt/mlenv/site-packages/tinylib/sub/__pycache__/mod.cpython-311.pyc").read()
        assert pyc[4:8] == b"\x01\x00\x00\x00"  # unchecked-hash: never re-validated, never rewritten
        assert b"/opt/mlenv/site-packages/tinylib/sub/mod.py" in pyc
        assert all(m.mtime == 0 and m.uid == 0 and not m.uname for m in tar.getmembers())


def test_ml_image_without_bundle_for_serve_fails_with_the_fix(samples):
    ws = samples[0]
    ws.write("bad/BUILD.bazel", 'load("//tools/rules:image.bzl", "ml_image")\n\n'
                                'ml_image(name = "images", train = ":t", serve = ":s")\n')
    result = ws.bazel("build", "//bad:all")
    assert result.returncode != 0
    assert 'ml_image(images): serve = ":s" needs bundle = ":<ml_model_bundle>"' in result.stderr
