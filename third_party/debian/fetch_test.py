"""@debian_bookworm through real Bazel on a sample workspace: a locked .deb becomes a layer; a tampered sha256
fails the FETCH naming the package, both hashes and the fix; a vanished URL fails saying to relock.

The sample is ours (WORKSPACE, toolchains, tools/rules, tools/lint, third_party/pip, third_party/debian) with the Debian lock replaced
by one tiny .deb served from a file:// URL, so nothing is downloaded.
"""

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from third_party.debian.private.debs_for_tests import Link, make_deb
from tools.testing.bazel_workspace import SampleWorkspace

LOCK = "third_party/debian/packages.lock.json"


def lock_text(deb: Path, sha256: str, url: str = "") -> str:
    return json.dumps({"inputs": "sha256:test", "architecture": "amd64", "suites": [], "excluded": {}, "packages": [{
        "name": "hello", "version": "1.0-1", "architecture": "amd64", "suite": "bookworm",
        "url": url or deb.as_uri(), "sha256": sha256, "size": deb.stat().st_size, "required_by": ["packages.in"],
    }]}, indent=2)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("fetch")
    ws = SampleWorkspace.create(root / "ws")
    for rel in ("WORKSPACE", "toolchains", "tools/rules", "tools/lint", "third_party/pip", "third_party/debian"):
        src = Path.cwd() / rel
        (shutil.copytree(src, ws.root / rel, dirs_exist_ok=True) if src.is_dir()
         else shutil.copy(src, ws.root / rel))
    ws.deb = make_deb(root / "hello_1.0-1_amd64.deb", "hello", "1.0-1",
                      {"bin/hello": b"#!/bin/sh\necho hello\n", "bin/hi": Link("hello")})
    ws.write("BUILD.bazel", 'load("//third_party/debian:layer.bzl", "debian_base_layer")\n'
                            'debian_base_layer(name = "layer", interpreter = "")\n')
    yield ws
    ws.shutdown()


def test_locked_deb_becomes_a_layer(sample):
    sample.write(LOCK, lock_text(sample.deb, hashlib.sha256(sample.deb.read_bytes()).hexdigest()))
    result = sample.bazel("build", "//:layer")
    assert result.returncode == 0, result.stderr[-4000:]
    with tarfile.open(sample.root / "bazel-bin/layer.tar") as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["usr/bin/hello"].isfile() and names["bin"].linkname == "usr/bin"
    assert names["var/lib/dpkg/status.d/hello"].isfile()
    assert (sample.root / "bazel-bin/layer.tar.sha256").read_text().startswith("sha256:")


def test_tampered_sha256_fails_the_fetch_naming_the_package(sample):
    sample.write(LOCK, lock_text(sample.deb, "0" * 64))
    result = sample.bazel("build", "//:layer")
    assert result.returncode != 0
    err = result.stderr
    actual = hashlib.sha256(sample.deb.read_bytes()).hexdigest()
    assert "hash mismatch for Debian package hello 1.0-1 (amd64)" in err, err[-4000:]
    assert "0" * 64 in err and actual in err
    assert "tools/bazel run //third_party/debian:lock" in err


def test_vanished_url_fails_saying_to_relock(sample):
    # A version the repository cache has never seen (a cached sha256 is served without asking the URL).
    gone = make_deb(sample.deb.with_name("hello_0.9-1_amd64.deb"), "hello", "0.9-1", {"bin/hello": b"old\n"})
    digest = hashlib.sha256(gone.read_bytes()).hexdigest()
    gone.unlink()
    sample.write(LOCK, lock_text(sample.deb, digest, url=gone.as_uri()))
    result = sample.bazel("build", "//:layer")
    assert result.returncode != 0
    assert "cannot download Debian package hello 1.0-1" in result.stderr, result.stderr[-4000:]
    assert "Relock with `tools/bazel run //third_party/debian:lock`" in result.stderr
