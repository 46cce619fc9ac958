"""A minimal real OCI image layout (config + manifest, no layers) and the image info file that `ml_image`'s
consumers (:launch, :sweep_k8s) read, for tests of code that pins an image by digest without building one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["write_image_info"]

_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_image_info(folder: Path, entrypoint: list[str], info_name: str, label: str) -> tuple[Path, str]:
    """Writes `folder/train_image/` (an OCI layout whose config has `entrypoint`), its digest file and
    `folder/info_name` naming them; returns the info file and the manifest digest."""
    layout = folder / "train_image"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": entrypoint},
                         "rootfs": {"type": "layers", "diff_ids": []}}, sort_keys=True).encode()
    cfg = _blob(layout, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": _MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
                           "layers": []}, sort_keys=True).encode()
    man = _blob(layout, manifest)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": _MANIFEST, **man}]}))
    (folder / "train_image.digest").write_text(man["digest"] + "\n")
    info = folder / info_name
    info.write_text(json.dumps({"layout": "train_image", "digest_file": "train_image.digest",
                                "info": info.name, "label": label}))
    return info, man["digest"]
