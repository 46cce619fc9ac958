"""The one-environment promise, checked on the built OCI layouts: retrieval's images (Keras on TensorFlow)
and homefeed's (PyTorch) carry the same environment layer, byte for byte.

Read from each layout's manifest and config (not from the BUILD files): the layer whose history names it
"environment" has one digest in all four images, and the blob in retrieval's train image hashes to that
digest. The app layers must differ (two projects' code), so the test compares different images.
"""

import hashlib
import json
from pathlib import Path

from tools.rules.private import oci

IMAGES = {
    "retrieval train": Path("ml/retrieval/train_image"),
    "retrieval serve": Path("ml/retrieval/serve_image"),
    "homefeed train": Path("ml/homefeed/train_image"),
    "homefeed serve": Path("ml/homefeed/serve_image"),
}


def layers_by_name(layout: Path) -> dict[str, str]:
    """{history comment: layer digest} from the layout's manifest and config."""
    _, manifest, _ = oci.read_layout(layout)
    config = json.loads(oci.blob_path(layout, manifest["config"]["digest"]).read_bytes())
    names = [h.get("comment") for h in config["history"]]
    assert len(names) == len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]), layout
    return {name: desc["digest"] for name, desc in zip(names, manifest["layers"], strict=True)}


def test_environment_layer_is_byte_identical_across_projects():
    found = {what: layers_by_name(layout) for what, layout in IMAGES.items()}
    env = {what: layers["environment"] for what, layers in found.items()}
    assert len(set(env.values())) == 1, f"environment layers differ: {json.dumps(env, indent=2)}"
    # the digest is that of the bytes in the layout, not only what the manifest claims
    blob = oci.blob_path(IMAGES["retrieval train"], env["retrieval train"])
    digest = hashlib.sha256()
    with open(blob, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    assert "sha256:" + digest.hexdigest() == env["retrieval train"]
    assert found["retrieval train"]["base"] == found["homefeed train"]["base"]
    # two projects, two apps: had the test been handed one project's images twice, this would fail
    assert found["retrieval train"]["app"] != found["homefeed train"]["app"]
    assert found["retrieval serve"]["model"] != found["homefeed serve"]["model"]
