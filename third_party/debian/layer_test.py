"""//third_party/debian:base_layer is deterministic and shaped like a distroless root; the builder's rules
(merged /usr, dropped docs, generated files, clear errors) on tiny synthetic packages."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from third_party.debian.private import build_layer
from third_party.debian.private.debs_for_tests import Link, make_deb
from tools.testing.bazel_workspace import runfiles_repo

LAYER = Path("third_party/debian/base_layer.tar")
DIFF_ID = Path("third_party/debian/base_layer.tar.sha256")
PACKAGES = runfiles_repo("debian_bookworm") / "packages.json"
BUILDER = Path(build_layer.__file__)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def test_two_builds_are_byte_identical_and_equal_to_bazels(tmp_path):
    digests = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.tar"
        subprocess.run([sys.executable, str(BUILDER), "--packages", str(PACKAGES.resolve()), "--out", str(out),
                        "--diff-id", str(tmp_path / f"{run}.sha256"), "--interpreter", "/usr/bin/python3.11"],
                       check=True, cwd=tmp_path)
        digests.append(sha256(out))
        assert (tmp_path / f"{run}.sha256").read_text().strip() == digests[-1]
    assert digests[0] == digests[1], "two builds of the layer differ"
    assert digests[0] == DIFF_ID.read_text().strip() == sha256(LAYER)


@pytest.fixture(scope="module")
def members():
    with tarfile.open(LAYER) as tar:
        return tar.getmembers()


def test_entries_are_sorted_owned_by_root_with_mtime_zero(members):
    names = [m.name for m in members]
    assert names == sorted(names) and len(set(names)) == len(names)
    for m in members:
        assert m.mtime == 0 and m.uname == "" and m.gname == "", m.name
        assert (m.uid, m.gid) == ((65532, 65532) if m.name == "home/nonroot" else (0, 0)), m.name
        assert not m.name.startswith(("/", "./")), m.name


def test_merged_usr_layout(members):
    by_name = {m.name: m for m in members}
    for top in ("bin", "sbin", "lib", "lib64"):
        assert by_name[top].issym() and by_name[top].linkname == f"usr/{top}"
        assert not any(n.startswith(top + "/") for n in by_name), f"files left under /{top}"
    assert by_name["usr/bin/python3.11"].isfile()
    assert by_name["usr/bin/sh"].linkname == "dash"
    assert by_name["usr/lib64/ld-linux-x86-64.so.2"].linkname == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert by_name["usr/lib/x86_64-linux-gnu/libstdc++.so.6"].issym()


def test_docs_dropped_and_generated_files_present(members):
    by_name = {m.name: m for m in members}
    docs = [n for n in by_name if n.startswith("usr/share/doc/") and n.count("/") > 3]
    assert docs and all(n.endswith("/copyright") for n in docs), docs[:5]
    assert not [n for n in by_name if n.startswith(("usr/share/man/", "usr/share/info/", "usr/share/locale/"))]
    assert by_name["tmp"].mode == 0o1777 and by_name["root"].mode == 0o700
    for name in ("etc/passwd", "etc/group", "etc/nsswitch.conf", "etc/ssl/certs/ca-certificates.crt",
                 "etc/os-release", "etc/debian_version", "usr/lib/ssl/cert.pem", "etc/localtime"):
        assert name in by_name, name
    locked = {p["name"] for p in json.loads(PACKAGES.read_text())["packages"]}
    status = {n.rsplit("/", 1)[1] for n in by_name if n.startswith("var/lib/dpkg/status.d/") and by_name[n].isfile()}
    assert status == locked
    with tarfile.open(LAYER) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()
        record = tar.extractfile("var/lib/dpkg/status.d/libc6").read().decode()
    assert "nonroot:x:65532:65532:nonroot:/home/nonroot:" in passwd and passwd.startswith("root:x:0:0:")
    assert record.startswith("Package: libc6\n") and "\nVersion: " in record


# --- the builder's rules, on synthetic packages -----------------------------------------------------------

def build(tmp_path: Path, debs: list[tuple[str, Path]], interpreter: str = "") -> dict[str, tarfile.TarInfo]:
    spec = {"packages": [{"name": n, "version": "1", "file": str(p.relative_to(tmp_path))} for n, p in debs]}
    (tmp_path / "packages.json").write_text(json.dumps(spec))
    out = tmp_path / "layer.tar"
    build_layer.build(tmp_path / "packages.json", out, interpreter)
    with tarfile.open(out) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_synthetic_package_is_moved_under_usr_with_links_fixed(tmp_path):
    deb = make_deb(tmp_path / "tool.deb", "tool", "1", {
        "bin/tool": b"#!/bin/sh\n",
        "bin/alias": Link("tool"),
        "sbin/up": Link("../usr/lib/tool/run"),
        "bin/copy": Link("bin/tool", hard=True),
        "usr/lib/tool/run": b"x",
        "usr/share/doc/tool/changelog.gz": b"dropped",
        "usr/share/doc/tool/copyright": b"kept",
        "usr/share/man/man1/tool.1.gz": b"dropped",
    })
    layer = build(tmp_path, [("tool", deb)])
    assert layer["usr"].isdir() and layer["usr/bin"].isdir() and layer["bin"].linkname == "usr/bin"
    assert layer["usr/bin/tool"].isfile() and layer["usr/bin/alias"].linkname == "tool"
    assert layer["usr/sbin/up"].linkname == "../lib/tool/run"  # still /usr/lib/tool/run from its new place
    assert layer["usr/bin/copy"].isfile() and layer["usr/bin/copy"].size == len(b"#!/bin/sh\n")
    assert "usr/share/doc/tool/copyright" in layer and "usr/share/doc/tool/changelog.gz" not in layer
    assert not any(n.startswith("usr/share/man") for n in layer)
    assert layer["var/lib/dpkg/status.d/tool"].isfile()


def test_zstd_data_fails_naming_the_package(tmp_path):
    deb = make_deb(tmp_path / "z.deb", "zpkg", "1", {"usr/bin/z": b"z"}, data_compression="zst")
    with pytest.raises(build_layer.LayerError, match=r"zpkg 1 \(z.deb\): data.tar.zst is compressed with 'zst'"):
        build(tmp_path, [("zpkg", deb)])


def test_overlapping_files_fail_naming_both_packages(tmp_path):
    one = make_deb(tmp_path / "one.deb", "one", "1", {"bin/same": b"1"})
    two = make_deb(tmp_path / "two.deb", "two", "1", {"usr/bin/same": b"2"})
    with pytest.raises(build_layer.LayerError, match=r"/usr/bin/same is shipped differently by one 1 .* and two 1"):
        build(tmp_path, [("one", one), ("two", two)])


def test_missing_interpreter_fails_clearly(tmp_path):
    deb = make_deb(tmp_path / "t.deb", "t", "1", {"usr/bin/t": b"t"})
    with pytest.raises(build_layer.LayerError, match=r"the interpreter /usr/bin/python3.11 is not a file in the layer"):
        build(tmp_path, [("t", deb)], interpreter="/usr/bin/python3.11")


def test_not_a_deb_fails_clearly(tmp_path):
    (tmp_path / "bad.deb").write_bytes(b"<html>404</html>")
    with pytest.raises(build_layer.LayerError, match=r"bad 1 \(bad.deb\) is not a Debian package"):
        build(tmp_path, [("bad", tmp_path / "bad.deb")])
