"""oci.py against hostile layouts: a descriptor's digest is a file name under blobs/, so a digest that is not
`sha256:<64 hex>` must be refused before any path is built from it (issue 16)."""

import json
from pathlib import Path

import pytest

from tools.rules.private import oci


def _layout(tmp_path: Path) -> Path:
    layer = tmp_path / "layer.tar"
    digest, _ = oci.write_layer([oci.Entry("hello.txt", "file", data=b"hello\n")], layer)
    out = tmp_path / "layout"
    oci.build_image([("app", layer, digest)], {"entrypoint": ["/bin/true"]}, None, out)
    oci.verify_layout(out)  # the untouched layout verifies
    return out


def _edit_index(layout: Path, digest: str) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = digest
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("digest", ["sha256:../../secret", "sha256:" + "A" * 64, "sha256:abc", "md5:" + "0" * 64, 7])
def test_a_malformed_manifest_digest_is_refused_before_it_becomes_a_path(tmp_path, digest):
    layout = _layout(tmp_path)
    (tmp_path / "secret").write_text("outside the layout\n")  # where sha256:../../secret would lead
    _edit_index(layout, digest)
    with pytest.raises(oci.OciError, match=r"the manifest in index.json has digest .*: not a sha256 digest"):
        oci.verify_layout(layout)


def test_a_malformed_layer_digest_is_refused(tmp_path):
    layout = _layout(tmp_path)
    _, manifest, _ = oci.read_layout(layout)
    manifest["layers"][0]["digest"] = "sha256:../../../etc/passwd"
    data = json.dumps(manifest).encode()
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    oci.blob_path(layout, digest).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=digest, size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(oci.OciError, match=r"layer 0 \(.*\) has digest '.*etc/passwd': not a sha256 digest"):
        oci.verify_layout(layout)


def test_blob_path_refuses_what_it_cannot_name(tmp_path):
    with pytest.raises(oci.OciError, match="not a sha256 digest"):
        oci.blob_path(tmp_path, "sha256:/abs")
    good = "sha256:" + "0" * 64
    assert oci.blob_path(tmp_path, good) == tmp_path / "blobs" / "sha256" / ("0" * 64)


@pytest.mark.parametrize("name,kind", [("../escape", "file"), ("/abs", "file"), ("blobs/link", "symlink")])
def test_a_tarball_with_an_escaping_or_linked_member_is_refused_before_extraction(tmp_path, name, kind):
    import io
    import tarfile

    layout = _layout(tmp_path)
    (layout / "manifest.json").write_text("[]")  # what `docker load` reads; the tarball has it
    tarball = tmp_path / "image.tar"
    with tarfile.open(tarball, "w") as tar:
        for child in sorted(layout.iterdir()):
            tar.add(child, arcname=child.name)
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(oci.OciError, match=r"is not a plain relative file or folder"):
        oci.verify_tarball(tarball)
    assert not (tmp_path / "escape").exists()
