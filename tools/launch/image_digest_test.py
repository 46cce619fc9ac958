"""The manifests `//ml/homefeed:launch --on k8s` prints pin exactly the digest of the real
`//ml/homefeed:train_image` that Bazel built: its `.digest` file and its layout's index.json agree with
every `image:` in every flavour, and the command is the image's own Entrypoint under torchrun.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

PKG = Path("ml/homefeed")
REPOSITORY = "registry.example.com/ml/homefeed"


def images(objects: list[dict]) -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(objects)
    return found


@pytest.mark.parametrize("flavor", ["job", "trainjob"])
def test_manifest_digest_is_the_ml_image_digest(flavor):
    built = (PKG / "train_image.digest").read_text().strip()
    index = json.loads((PKG / "train_image" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == built
    proc = subprocess.run([str(PKG / "launch"), "--on", "k8s", "--flavor", flavor, "--repository", REPOSITORY,
                           "--dry-run", "--", "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objects = list(yaml.safe_load_all(proc.stdout))
    found = images(objects)
    assert found and set(found) == {f"{REPOSITORY}@{built}"}
