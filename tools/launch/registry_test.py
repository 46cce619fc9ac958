"""`--on k8s` refuses an image the registry does not have, asking a real registry (Debian's docker-registry
on loopback) through skopeo, and accepts it once that exact digest is there.

The image pushed here is a minimal real OCI image (a config and a manifest, no layers) uploaded with the
registry's own HTTP API, so the test does not need the multi-GB train image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from tools.launch.image import ImageRef, check_pushed
from tools.launch.spec import LaunchError

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if not os.access(REGISTRY, os.X_OK) or not shutil.which("skopeo"):
        pytest.fail("needs Debian's docker-registry and skopeo: sudo apt-get install docker-registry skopeo")
    work = tmp_path_factory.mktemp("registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = work / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    log = open(work / "registry.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (work / "registry.log").read_text()
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def upload_blob(host: str, name: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"http://{host}/v2/{name}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start, timeout=10) as resp:
        location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", data=data, method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(put, timeout=10).close()
    return digest


def push_minimal_image(host: str, name: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cfg = upload_blob(host, name, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST, "layers": [],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg,
                                      "size": len(config)}}).encode()
    req = urllib.request.Request(f"http://{host}/v2/{name}/manifests/v1", data=manifest, method="PUT",
                                 headers={"Content-Type": MT_MANIFEST})
    urllib.request.urlopen(req, timeout=10).close()
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def test_an_image_never_pushed_is_refused_with_the_push_command(registry):
    image = ImageRef(f"{registry}/ml/homefeed", "sha256:" + "ab" * 32, ("/bin/true",))
    with pytest.raises(LaunchError, match="is not in the registry") as err:
        check_pushed(image)
    assert f"train_image.push -- --repository {registry}/ml/homefeed" in str(err.value)


def test_the_pushed_digest_is_accepted_and_another_is_not(registry):
    digest = push_minimal_image(registry, "ml/pushed")
    check_pushed(ImageRef(f"{registry}/ml/pushed", digest, ("/bin/true",)))
    with pytest.raises(LaunchError, match="is not in the registry"):
        check_pushed(ImageRef(f"{registry}/ml/pushed", "sha256:" + "cd" * 32, ("/bin/true",)))


def test_a_registry_that_does_not_answer_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    image = ImageRef(f"127.0.0.1:{port}/ml/homefeed", "sha256:" + "ab" * 32, ("/bin/true",))
    with pytest.raises(LaunchError, match=f"could not ask the registry 127.0.0.1:{port}") as err:
        check_pushed(image, timeout_s=30)
    assert "connection refused" in str(err.value).lower()
