"""Builds the base image layer from locked Debian packages: one uncompressed, deterministic tar.

    build_layer.py --packages @debian_bookworm/packages.json --out base_layer.tar --diff-id base_layer.tar.sha256

Standard library only, no dpkg, no root. Each .deb (an `ar` archive) is opened, its data.tar.{xz,gz,bz2,}
merged into one tree and its control file recorded as /var/lib/dpkg/status.d/<package> (where scanners such
as Trivy and Syft look in distroless images). Maintainer scripts are never run; the few files they would
have made are generated here instead (see GENERATED below and docs/debian-base.md).

The tree follows bookworm's merged /usr: /bin, /sbin, /lib and /lib64 are symlinks into /usr and whatever a
package ships there is moved below /usr. Entries are sorted by path, owned by 0:0 without user or group
names (the nonroot home by 65532), have mtime 0 and the modes the packages give; /usr/share/doc (except
copyright files), man, info, locale and lintian data are dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import posixpath
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

MERGED_DIRS = ("bin", "sbin", "lib", "lib64")
NONROOT_UID = 65532
DROPPED_TREES = ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian")


class LayerError(Exception):
    """The packages cannot be turned into a layer; the message names the package and what to do."""


@dataclass
class Entry:
    kind: bytes  # tarfile.REGTYPE, DIRTYPE or SYMTYPE
    mode: int
    package: str
    data: bytes = b""
    linkname: str = ""
    uid: int = 0


# --- reading .deb files ---------------------------------------------------------------------------------

def ar_members(blob: bytes, where: str) -> dict[str, bytes]:
    if not blob.startswith(b"!<arch>\n"):
        raise LayerError(f"{where} is not a Debian package (no ar header); re-fetch it: "
                         f"tools/bazel sync --only=debian_bookworm")
    members, pos = {}, 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def open_member(members: dict[str, bytes], stem: str, where: str) -> tarfile.TarFile:
    for name, blob in members.items():
        if not name.startswith(stem):
            continue
        compression = name[len(stem):].lstrip(".")
        modes = {"xz": "r:xz", "gz": "r:gz", "bz2": "r:bz2", "": "r:"}
        if compression not in modes:
            raise LayerError(
                f"{where}: {name} is compressed with {compression!r}, which Python's standard library cannot read "
                f"(every bookworm package locked today uses xz). Pin a version of the package that uses xz, or "
                f"teach third_party/debian/private/build_layer.py that format with a hash-pinned decoder")
        return tarfile.open(fileobj=io.BytesIO(blob), mode=modes[compression])
    raise LayerError(f"{where} has no {stem}.* member; the file is damaged: tools/bazel sync --only=debian_bookworm")


def read_control(members: dict[str, bytes], where: str) -> str:
    with open_member(members, "control.tar", where) as tar:
        for member in tar.getmembers():
            if member.name.lstrip("./") == "control":
                return tar.extractfile(member).read().decode()
    raise LayerError(f"{where}: control.tar has no control file")


# --- the tree -------------------------------------------------------------------------------------------

def clean(name: str) -> str:
    """A member name as a relative path without ./ or a trailing slash ("" for the root)."""
    return posixpath.normpath("/" + name).lstrip("/")


def merged_usr(path: str) -> str:
    """Where `path` (relative, no leading /) lives under bookworm's merged /usr."""
    top, _, rest = path.partition("/")
    if top in MERGED_DIRS:
        return posixpath.join("usr", top, rest) if rest else f"usr/{top}"
    return path


def relink(path: str, new_path: str, target: str) -> str:
    """A relative symlink target, still pointing at the same file after moving the link from path to new_path."""
    if target.startswith("/") or path == new_path:
        return target
    absolute = posixpath.normpath(posixpath.join(posixpath.dirname(path), target)).lstrip("/")
    return posixpath.relpath(merged_usr(absolute), posixpath.dirname(new_path) or ".")


def dropped(path: str) -> bool:
    if any(path == tree or path.startswith(tree + "/") for tree in DROPPED_TREES):
        return True
    if path.startswith("usr/share/doc/"):
        parts = path.split("/")
        # Keep usr/share/doc/<pkg> (a directory or a symlink to another package's) and its copyright.
        return not (len(parts) == 4 or (len(parts) == 5 and parts[4] == "copyright"))
    return False


class Tree:
    def __init__(self):
        self.entries: dict[str, Entry] = {}

    def add(self, path: str, entry: Entry) -> None:
        current = self.entries.get(path)
        if current is None:
            self.entries[path] = entry
            return
        if current.kind == tarfile.DIRTYPE and entry.kind == tarfile.DIRTYPE:
            return  # directories are shared; the first package (by name) sets the mode
        if (current.kind, current.data, current.linkname) == (entry.kind, entry.data, entry.linkname):
            return
        raise LayerError(f"/{path} is shipped differently by {current.package} and {entry.package}; Debian forbids "
                         f"such overlaps, so one of them is not from bookworm: relock with "
                         f"`tools/bazel run //third_party/debian:lock`")

    def add_parents(self, path: str, package: str) -> None:
        parent = posixpath.dirname(path)
        while parent and parent not in self.entries:
            self.entries[parent] = Entry(tarfile.DIRTYPE, 0o755, package)
            parent = posixpath.dirname(parent)

    def add_package(self, name: str, blob: bytes) -> str:
        """Adds the data of one .deb; returns its control file."""
        members = ar_members(blob, name)
        control = read_control(members, name)
        hardlinks = []
        with open_member(members, "data.tar", name) as tar:
            for member in tar:
                raw = clean(member.name)
                if not raw:
                    continue
                path = merged_usr(raw)
                if dropped(path):
                    continue
                mode = member.mode & 0o7777
                if member.isdir():
                    entry = Entry(tarfile.DIRTYPE, mode, name)
                elif member.issym():
                    entry = Entry(tarfile.SYMTYPE, 0o777, name, linkname=relink(raw, path, member.linkname))
                elif member.islnk():
                    hardlinks.append((path, merged_usr(clean(member.linkname)), mode))
                    continue
                elif member.isreg():
                    entry = Entry(tarfile.REGTYPE, mode, name, data=tar.extractfile(member).read())
                else:
                    raise LayerError(f"{name}: /{raw} is a device, fifo or other special file; a container layer "
                                     f"cannot carry it: exclude {name} in third_party/debian/packages.in")
                self.add(path, entry)
        for path, target, mode in hardlinks:  # as regular files: a sorted tar cannot promise the target comes first
            source = self.entries.get(target)
            if source is None or source.kind != tarfile.REGTYPE:
                raise LayerError(f"{name}: hard link /{path} points at /{target}, which the package does not ship")
            self.add(path, Entry(tarfile.REGTYPE, mode, name, data=source.data))
        return control


# --- generated files ------------------------------------------------------------------------------------

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\n" f"nonroot:x:{NONROOT_UID}:\n"
NSSWITCH = (
    "# Generated by //third_party/debian:base_layer: only the files in /etc, plus DNS for hosts.\n"
    "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n"
    "hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n"
)
CA_DIR = "usr/share/ca-certificates/mozilla/"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


def add_generated(tree: Tree, controls: dict[str, str]) -> None:
    gen = "(generated)"

    def put(path: str, entry: Entry) -> None:
        tree.entries[path] = entry
        tree.add_parents(path, gen)

    for top in MERGED_DIRS:
        if top in tree.entries and tree.entries[top].kind != tarfile.SYMTYPE:
            raise LayerError(f"/{top} should have been merged into /usr")
        put(top, Entry(tarfile.SYMTYPE, 0o777, gen, linkname=f"usr/{top}"))
        tree.entries.setdefault(f"usr/{top}", Entry(tarfile.DIRTYPE, 0o755, gen))
    put("etc/passwd", Entry(tarfile.REGTYPE, 0o644, gen, data=PASSWD.encode()))
    put("etc/group", Entry(tarfile.REGTYPE, 0o644, gen, data=GROUP.encode()))
    put("etc/nsswitch.conf", Entry(tarfile.REGTYPE, 0o644, gen, data=NSSWITCH.encode()))
    put("tmp", Entry(tarfile.DIRTYPE, 0o1777, gen))
    put("root", Entry(tarfile.DIRTYPE, 0o700, gen))
    put("home/nonroot", Entry(tarfile.DIRTYPE, 0o700, gen, uid=NONROOT_UID))
    # tzdata's postinst (debconf) would pick the zone; containers run in UTC.
    if "usr/share/zoneinfo/Etc/UTC" in tree.entries:
        put("etc/localtime", Entry(tarfile.SYMTYPE, 0o777, gen, linkname="/usr/share/zoneinfo/Etc/UTC"))
        put("etc/timezone", Entry(tarfile.REGTYPE, 0o644, gen, data=b"Etc/UTC\n"))
    # ca-certificates' postinst (update-ca-certificates) would build the bundle from every Mozilla root;
    # OpenSSL looks in /usr/lib/ssl (links the `openssl` package would have shipped).
    certs = sorted(p for p, e in tree.entries.items() if p.startswith(CA_DIR) and p.endswith(".crt")
                   and e.kind == tarfile.REGTYPE)
    if certs:
        bundle = b"".join(tree.entries[p].data.rstrip(b"\n") + b"\n" for p in certs)
        put(CA_BUNDLE, Entry(tarfile.REGTYPE, 0o644, gen, data=bundle))
        put("usr/lib/ssl/cert.pem", Entry(tarfile.SYMTYPE, 0o777, gen, linkname=f"/{CA_BUNDLE}"))
        put("usr/lib/ssl/certs", Entry(tarfile.SYMTYPE, 0o777, gen, linkname="/etc/ssl/certs"))
    if "usr/bin/python3.11" in tree.entries and "usr/bin/python3" not in tree.entries:
        put("usr/bin/python3", Entry(tarfile.SYMTYPE, 0o777, gen, linkname="python3.11"))
    for name, control in controls.items():
        text = control.rstrip("\n") + "\n"
        put(f"var/lib/dpkg/status.d/{name}", Entry(tarfile.REGTYPE, 0o644, gen, data=text.encode()))
    for path in list(tree.entries):  # a directory that moved under /usr may lack its parents
        tree.add_parents(path, gen)


# --- writing --------------------------------------------------------------------------------------------

def write_layer(tree: Tree, out: Path) -> str:
    """Writes the sorted tar; returns its sha256 (the layer's diff_id)."""
    digest = hashlib.sha256()
    with open(out, "wb") as raw:
        class Hashing(io.RawIOBase):
            def write(self, b):
                digest.update(b)
                return raw.write(b)

        with tarfile.open(fileobj=Hashing(), mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
            for path in sorted(tree.entries):
                entry = tree.entries[path]
                info = tarfile.TarInfo(path)
                info.type = entry.kind
                info.mode = entry.mode
                info.uid = info.gid = entry.uid
                info.uname = info.gname = ""
                info.mtime = 0
                info.linkname = entry.linkname
                info.size = len(entry.data) if entry.kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return digest.hexdigest()


def build(packages_json: Path, out: Path, interpreter: str = "") -> str:
    spec = json.loads(packages_json.read_text())
    tree, controls = Tree(), {}
    for pkg in sorted(spec["packages"], key=lambda p: p["name"]):
        deb = packages_json.parent / pkg["file"]
        where = f"{pkg['name']} {pkg['version']} ({deb.name})"
        controls[pkg["name"]] = tree.add_package(where, deb.read_bytes())
    add_generated(tree, controls)
    if interpreter:
        entry = tree.entries.get(interpreter.lstrip("/"))
        if entry is None or entry.kind != tarfile.REGTYPE:
            raise LayerError(f"the interpreter {interpreter} is not a file in the layer; is its package "
                             f"(python3.11) in third_party/debian/packages.in?")
    return write_layer(tree, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", type=Path, required=True,
                        help="packages.json of the repository holding the .deb files (@debian_bookworm)")
    parser.add_argument("--out", type=Path, required=True, help="the layer tar to write")
    parser.add_argument("--diff-id", type=Path, help="where to write `sha256:<hex>` of the tar")
    parser.add_argument("--interpreter", default="", help="a path the layer must hold as a file")
    args = parser.parse_args(argv)
    try:
        digest = build(args.packages, args.out, args.interpreter)
    except LayerError as exc:
        sys.exit(f"base layer: {exc}")
    if args.diff_id:
        args.diff_id.write_text(f"sha256:{digest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
