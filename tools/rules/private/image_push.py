"""`bazel run //pkg:<image>.push -- --repository REGISTRY/NAME[:TAG]`: push an ml_image with skopeo.

The image is verified first (every blob re-hashed), then copied as is (uncompressed layers, our manifest
bytes) so the registry's digest is the digest Bazel built; skopeo's --digestfile is compared with ours and
the pushed reference is printed as REGISTRY/NAME@sha256:... (what deployments should pin).
`--insecure` (or a loopback registry) talks plain HTTP; credentials come from skopeo's usual auth files
(`skopeo login`, $REGISTRY_AUTH_FILE).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.rules.private import oci


def _is_loopback(host: str) -> bool:
    host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(repository: str) -> tuple[str, str]:
    """REGISTRY/NAME[:TAG] -> (REGISTRY/NAME, TAG)."""
    if "@" in repository:
        raise ValueError(f"--repository {repository!r}: give a tag, not a digest; the digest is what we print")
    last = repository.rsplit("/", 1)
    if "/" not in repository:
        raise ValueError(f"--repository {repository!r}: want REGISTRY/NAME[:TAG], e.g. 127.0.0.1:5000/homefeed:serve")
    if ":" in last[1]:
        name, tag = repository.rsplit(":", 1)
        return name, tag
    return repository, "latest"


def push(layout: Path, repository: str, *, insecure: bool | None = None, skopeo: str | None = None,
         quiet: bool = False) -> str:
    skopeo = skopeo or shutil.which("skopeo")
    if not skopeo:
        raise oci.OciError("skopeo is not installed: `sudo apt-get install skopeo` (Debian/Ubuntu)")
    expected = oci.verify_layout(layout)["manifest_digest"]
    name, tag = _split(repository)
    registry = name.split("/", 1)[0]
    if insecure is None:
        insecure = _is_loopback(registry)
    ref = oci.read_layout(layout)[0]["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name")
    with tempfile.TemporaryDirectory(prefix="mlenv-push-") as tmp:
        digest_file = Path(tmp) / "digest"
        cmd = [skopeo, "copy", "--retry-times", "2", "--preserve-digests", "--digestfile", str(digest_file),
               f"--dest-tls-verify={'false' if insecure else 'true'}",
               f"oci:{layout}" + (f":{ref}" if ref else ""), f"docker://{name}:{tag}"]
        if quiet:
            cmd.insert(2, "--quiet")
        result = subprocess.run(cmd, stdout=None if not quiet else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise oci.OciError(f"skopeo copy to {name}:{tag} failed: {result.stderr.strip()}")
        pushed = digest_file.read_text().strip()
    if pushed != expected:
        raise oci.OciError(f"the registry stored {pushed} but Bazel built {expected}: something re-encoded the "
                           "image on the way (a registry that converts manifests?)")
    return f"{name}@{pushed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="<image>.push", description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, nargs="+", help="the image files (layout, .digest), filled in by the .push target")
    parser.add_argument("--repository", required=True, help="REGISTRY/NAME[:TAG], e.g. registry.example.com/ml/homefeed:serve")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="plain HTTP / no TLS verification (default: only for loopback registries)")
    args = parser.parse_args(argv)
    try:
        layout, _ = oci._pick_image(args.image, None)
        layout = layout if layout.is_absolute() else Path(os.getcwd()) / layout
        print(push(layout, args.repository, insecure=args.insecure))
    except (oci.OciError, ValueError) as exc:
        print(f"push: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
