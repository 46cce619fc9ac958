"""The image a cluster runs: the `ml_image` layout Bazel built, pinned by its manifest digest.

Clusters get `REGISTRY/NAME@sha256:<digest>` — never a tag — where the digest is the one in the layout's
index.json (the same bytes `:train_image.digest` records and `.push` uploads). The command the manifests run
is the image config's own Entrypoint, so the launcher and the image cannot disagree on where the trainer is.
`check_pushed` asks the registry (through skopeo, which reads the same auth files `.push` used) whether that
exact digest is there, so a job is never submitted for an image the nodes cannot pull.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.launch.spec import LaunchError

__all__ = ["ImageRef", "from_info", "from_layout", "check_pushed"]


@dataclass(frozen=True)
class ImageRef:
    repository: str  # REGISTRY/NAME
    digest: str  # sha256:<64 hex>
    entrypoint: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"


def from_layout(layout: Path, repository: str) -> ImageRef:
    """Reads the digest and entrypoint of the OCI layout at `layout` (the ml_image target's output folder)."""
    from tools.rules.private import oci

    try:
        _, manifest, digest = oci.read_layout(layout)
        config_digest = manifest["config"]["digest"]
        config = json.loads(oci._read_blob(layout, config_digest, what="the config"))  # noqa: SLF001
    except (oci.OciError, OSError, KeyError, ValueError) as exc:
        raise LaunchError(f"cannot read the train image at {layout}: {exc}; rebuild it "
                          "(tools/bazel build //<project>:train_image)") from exc
    entrypoint = tuple(config.get("config", {}).get("Entrypoint") or ())
    if not entrypoint:
        raise LaunchError(f"the image at {layout} has no Entrypoint; it was not built by ml_image")
    return ImageRef(repository, digest, entrypoint)


def from_info(info_file: Path, repository: str) -> ImageRef:
    """Reads the JSON the :launch target writes (layout and .digest paths, relative to the runfiles root).

    The layout's own digest must equal the `.digest` file Bazel wrote next to it: both come from one build.
    """
    info = json.loads(info_file.read_text())
    root = Path(os.path.abspath(info_file)).parents[len(Path(info["info"]).parts) - 1]
    image = from_layout(root / info["layout"], repository)
    recorded = (root / info["digest_file"]).read_text().strip()
    if recorded != image.digest:
        raise LaunchError(f"{info['label']}: the layout's manifest digest {image.digest} differs from its .digest "
                          f"file ({recorded}); rebuild the image (tools/bazel build {info['label']})")
    return image


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_pushed(image: ImageRef, *, insecure: bool | None = None, timeout_s: float = 60) -> None:
    """Fails unless the registry serves a manifest whose bytes hash to image.digest."""
    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise LaunchError("checking that the image was pushed needs skopeo (sudo apt-get install skopeo); "
                          "or pass --skip-push-check if you know the digest is in the registry")
    registry = image.repository.split("/", 1)[0]
    insecure = _is_loopback(registry) if insecure is None else insecure
    cmd = [skopeo, "inspect", "--raw", "--retry-times", "0"]
    if insecure:
        cmd.append("--tls-verify=false")
    cmd.append(f"docker://{image.reference}")
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"the registry {registry} did not answer within {timeout_s:.0f} s; check --repository "
                          "and the network") from None
    push_hint = (f"push it first: tools/bazel run //<project>:train_image.push -- --repository {image.repository}")
    if proc.returncode != 0:
        detail = (proc.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        if "manifest unknown" in detail.lower() or "not found" in detail.lower():
            raise LaunchError(f"the image {image.reference} is not in the registry (skopeo: {detail}); {push_hint}")
        raise LaunchError(f"could not ask the registry {registry} for {image.reference} (skopeo: {detail}); check "
                          "--repository, the network and the credentials (skopeo login)")
    actual = "sha256:" + hashlib.sha256(proc.stdout).hexdigest()
    if actual != image.digest:
        raise LaunchError(f"the registry answered {image.reference} with a manifest hashing to {actual}; "
                          f"the registry is not serving the image Bazel built. {push_hint}")
