"""Push to a real registry on loopback (Debian's docker-registry) and pull back by digest.

- `serve_image.push` (the `bazel run` target) pushes with skopeo and prints REGISTRY/NAME@<the digest Bazel
  built>; pulling that reference back gives a layout that verifies with the same manifest digest;
- pushing the train image afterwards uploads only its config: base, environment and app layers are
  already in the registry (what a code-only change costs is decided by the layers, see docs/images.md);
- a malformed --repository fails with the expected form.
"""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tools.rules.private import oci

PKG = Path("ml/homefeed")
REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blobs(storage: Path) -> set[str]:
    root = storage / "docker/registry/v2/blobs/sha256"
    return {"sha256:" + p.parent.name for p in root.glob("*/*/data")} if root.exists() else set()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if not os.access(REGISTRY, os.X_OK) or not shutil.which("skopeo"):
        pytest.fail("needs Debian's docker-registry and skopeo: sudo apt-get install docker-registry skopeo")
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = work / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    log = open(work / "registry.log", "w")  # noqa: SIM115 - the registry writes it until stopped
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (work / "registry.log").read_text()
            time.sleep(0.2)
    yield f"127.0.0.1:{port}", work / "storage"
    proc.terminate()
    proc.wait(timeout=30)


def push(image: str, repository: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PKG / f"{image}.push"), str(PKG / image), "--repository", repository],
                          capture_output=True, text=True, timeout=900)


def test_push_prints_the_built_digest_and_pulls_back_by_it(registry, tmp_path):
    host, storage = registry
    digest = (PKG / "serve_image.digest").read_text().strip()
    result = push("serve_image", f"{host}/mlenv/homefeed:serve")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"{host}/mlenv/homefeed@{digest}"
    pulled = tmp_path / "pulled"
    pull = subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                           f"docker://{host}/mlenv/homefeed@{digest}", f"oci:{pulled}:pulled"],
                          capture_output=True, text=True, timeout=900)
    assert pull.returncode == 0, pull.stderr
    assert oci.verify_layout(pulled, digest)["manifest_digest"] == digest

    before = blobs(storage)
    result = push("train_image", f"{host}/mlenv/homefeed:train")
    assert result.returncode == 0, result.stderr[-3000:]
    _, manifest, train_digest = oci.read_layout(PKG / "train_image")
    new = blobs(storage) - before  # the registry keeps manifests as blobs too
    assert new == {manifest["config"]["digest"], train_digest}, "the train image should upload only its config"


def test_bad_repository_is_refused_with_the_expected_form(registry):
    result = push("serve_image", "homefeed")
    assert result.returncode == 1
    assert "want REGISTRY/NAME[:TAG]" in result.stderr
