"""Reproducible OCI images without a daemon: layers, image layout, load-able tarball, verification.

Ours (rules_oci lives on GitHub and cannot be fetched here); standard library only, so it runs as a Bazel
action on any host Python. Subcommands (each one a build action of tools/rules/private/image.bzl, except
`verify`, which tests and `<image>.verify` run):

  env-layer  --site-packages DIR --prefix /opt/mlenv --out layer.tar --digest-out layer.sha256
             The locked environment as ONE layer. uv's byte code is dropped (it embeds the host install
             path and so differs per output base) and every module is recompiled in memory with the path
             it has in the image and unchecked-hash invalidation: deterministic, and containers start
             without compiling torch or tensorflow. Scripts in bin/ are dropped.
  files-layer --manifest M --out layer.tar --digest-out layer.sha256
             A layer from a manifest of `dest<TAB>kind<TAB>source` lines (kind: file, dir (a tree), empty,
             mkdir, symlink); used for the app layer (a binary's runfiles) and the model layer (a bundle).
  image      --layer NAME=TAR=DIGESTFILE ... --config-json SPEC --stable-status F --out-dir LAYOUT
             --digest-out F --layers-out F: an OCI image layout (blobs hard-linked, not copied).
  tarball    --layout LAYOUT --out image.tar --repo-tag NAME:TAG: one file holding the OCI layout AND a
             docker-style manifest.json, which `podman load` and `docker load` both accept.
  verify     LAYOUT_OR_TARBALL [--expect-digest sha256:...]: re-hashes every blob and checks the manifest,
             config and diff_ids against each other; names the broken blob and the fix.

Determinism: entries sorted by path, mtime 0, uid/gid 0 (or the owner asked for), no user/group names,
modes normalised to 0755/0644 (0755 for anything executable), PAX headers only where names need them,
uncompressed layers (gzip output depends on the zlib build), config `created` fixed at the epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

OCI_LAYOUT_VERSION = "1.0.0"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
EPOCH = "1970-01-01T00:00:00Z"
CHUNK = 1 << 20
CACHE_TAG = sys.implementation.cache_tag  # cpython-311: the image's interpreter must share it


class OciError(Exception):
    """A problem with an input or an image; the message names what and how to fix it."""


# ---------------------------------------------------------------------------------------------- layers

@dataclass(frozen=True)
class Entry:
    """One member of a layer. `path` is relative to / (no leading slash)."""

    path: str
    kind: str  # "file" | "dir" | "symlink"
    source: Path | None = None  # for files read from disk
    data: bytes | None = None  # for files made in memory
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""

    def sort_key(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what goes through it, and optionally stores it."""

    def __init__(self, sink):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += len(view)
        if self.sink is not None:
            self.sink.write(view)
        return len(view)


def _normal_mode(st_mode: int, is_dir: bool) -> int:
    if is_dir or st_mode & 0o111:
        return 0o755
    return 0o644


def _with_parents(entries: list[Entry]) -> list[Entry]:
    """Adds a 0755 root-owned entry for every parent directory not listed, then sorts; rejects duplicates."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        if not e.path or e.path.startswith("/") or ".." in e.path.split("/"):
            raise OciError(f"layer entry {e.path!r}: paths must be relative to / and stay inside it")
        if e.path in by_path and by_path[e.path] != e:
            prev = by_path[e.path]
            if not (prev.kind == e.kind == "dir"):
                raise OciError(f"layer entry /{e.path} is listed twice ({prev.kind} from {prev.source}, "
                               f"{e.kind} from {e.source}); two inputs map to the same place in the image")
        by_path.setdefault(e.path, e)
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in by_path:
                by_path[parent] = Entry(parent, "dir", mode=0o755)
            elif by_path[parent].kind != "dir":
                raise OciError(f"layer entry /{path} lies under /{parent}, which is a {by_path[parent].kind}")
    return sorted(by_path.values(), key=Entry.sort_key)


def write_layer(entries: list[Entry], out: Path | None) -> tuple[str, int]:
    """Writes a deterministic uncompressed tar (or only hashes it when out is None); returns (digest, size)."""
    entries = _with_parents(entries)
    sink = open(out, "wb") if out is not None else None  # noqa: SIM115 - closed below
    try:
        writer = _HashingWriter(sink)
        stream = io.BufferedWriter(writer, buffer_size=CHUNK)
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
            for e in entries:
                info = tarfile.TarInfo(e.path + ("/" if e.kind == "dir" else ""))
                info.mtime = 0
                info.uid, info.gid, info.uname, info.gname = e.uid, e.gid, "", ""
                info.mode = e.mode
                if e.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif e.kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = e.linkname
                    info.mode = 0o777
                    tar.addfile(info)
                elif e.data is not None:
                    info.size = len(e.data)
                    tar.addfile(info, io.BytesIO(e.data))
                else:
                    if e.source is None:
                        raise ValueError(f"layer entry {e.path!r} has neither data nor a source file")
                    with open(e.source, "rb") as f:
                        info.size = os.fstat(f.fileno()).st_size
                        tar.addfile(info, f)
        stream.flush()
        return "sha256:" + writer.sha.hexdigest(), writer.size
    finally:
        if sink is not None:
            sink.close()


def _walk(root: Path, dest: str, *, skip=lambda rel, is_dir: False, uid: int = 0, gid: int = 0) -> Iterator[Entry]:
    """Entries for a directory tree (symlinks inside kept as symlinks when they stay inside the tree)."""
    root = Path(os.path.realpath(root))
    yield Entry(dest, "dir", mode=0o755, uid=uid, gid=gid)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            rel = os.path.join(rel_dir, d)
            full = os.path.join(dirpath, d)
            if skip(rel, True):
                continue
            if os.path.islink(full):
                yield _symlink_entry(root, full, f"{dest}/{rel}", uid, gid)
                continue
            keep.append(d)
            yield Entry(f"{dest}/{rel}", "dir", mode=0o755, uid=uid, gid=gid)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = os.path.join(rel_dir, name)
            full = os.path.join(dirpath, name)
            if skip(rel, False):
                continue
            if os.path.islink(full):
                yield _symlink_entry(root, full, f"{dest}/{rel}", uid, gid)
                continue
            st = os.stat(full)
            yield Entry(f"{dest}/{rel}", "file", source=Path(full), mode=_normal_mode(st.st_mode, False), uid=uid, gid=gid)


def _symlink_entry(root: Path, full: str, dest: str, uid: int, gid: int) -> Entry:
    """A symlink inside a tree stays a (relative) symlink if it points inside the tree; else it is copied."""
    target = os.path.realpath(full)
    if target == str(root) or target.startswith(str(root) + os.sep):
        link = os.path.relpath(target, os.path.dirname(os.path.join(str(root), os.path.relpath(full, root))))
        return Entry(dest, "symlink", linkname=link, uid=uid, gid=gid)
    if os.path.isdir(target):
        raise OciError(f"{full} is a symlink to the directory {target}, outside the tree being layered; "
                       "copy it into the tree or list it separately")
    return Entry(dest, "file", source=Path(target), mode=_normal_mode(os.stat(target).st_mode, False), uid=uid, gid=gid)


# --------------------------------------------------------------------------------- byte code (env layer)

def _compile_one(job: tuple[str, str]) -> bytes | None:
    """Unchecked-hash .pyc for `source` as if it lived at `dest_path` (None if it does not compile)."""
    source, dest_path = job
    loader = importlib.machinery.SourceFileLoader("<mlenv-image>", source)
    try:
        data = loader.get_data(source)
        code = loader.source_to_code(data, dest_path)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None  # e.g. templates shipped as .py; Python would fail to import them too
    return importlib._bootstrap_external._code_to_hash_pyc(code, importlib.util.source_hash(data), checked=False)


def _pyc_entries(py_entries: list[Entry], jobs: int) -> list[Entry]:
    work = [(str(e.source), "/" + e.path) for e in py_entries]
    out: list[Entry] = []
    if jobs > 1 and len(work) > 200:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_compile_one, work, chunksize=64))
    else:
        results = [_compile_one(w) for w in work]
    for e, pyc in zip(py_entries, results, strict=True):
        if pyc is None:
            continue
        p = PurePosixPath(e.path)
        out.append(Entry(str(p.parent / "__pycache__" / f"{p.stem}.{CACHE_TAG}.pyc"), "file", data=pyc, mode=0o644))
    return out


def env_layer_entries(site_packages: Path, prefix: str, jobs: int) -> list[Entry]:
    if not site_packages.is_dir():
        raise OciError(f"--site-packages {site_packages} is not a directory; it should be @pypi//:site-packages")
    dest = prefix.strip("/") + "/site-packages"

    def skip(rel: str, is_dir: bool) -> bool:
        name = os.path.basename(rel)
        if is_dir:
            return name == "__pycache__" or rel == "bin"
        return name.endswith((".pyc", ".pyo"))

    entries = list(_walk(site_packages, dest, skip=skip))
    py = [e for e in entries if e.kind == "file" and e.path.endswith(".py")]
    entries += _pyc_entries(py, jobs)
    # __pycache__ directories themselves (0755) come from _with_parents.
    return entries


# ---------------------------------------------------------------------------------------- files layer

def files_layer_entries(manifest: Path) -> list[Entry]:
    """Lines: dest<TAB>kind<TAB>source[<TAB>owner]. kind: file | tree | empty | mkdir | symlink."""
    entries: list[Entry] = []
    for lineno, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise OciError(f"{manifest}:{lineno}: want dest<TAB>kind<TAB>source, got {line!r}")
        dest, kind, source = fields[0].strip("/"), fields[1], fields[2]
        uid = gid = 0
        if len(fields) > 3 and fields[3]:
            uid, gid = (int(x) for x in fields[3].split(":"))
        if kind == "file":
            real = os.path.realpath(source)
            if os.path.isdir(real):
                entries.extend(_walk(Path(real), dest, uid=uid, gid=gid))
            elif not os.path.exists(real):
                raise OciError(f"{manifest}:{lineno}: {source} does not exist")
            else:
                entries.append(Entry(dest, "file", source=Path(real), mode=_normal_mode(os.stat(real).st_mode, False),
                                     uid=uid, gid=gid))
        elif kind == "empty":
            entries.append(Entry(dest, "file", data=b"", mode=0o644, uid=uid, gid=gid))
        elif kind == "mkdir":
            entries.append(Entry(dest, "dir", mode=int(source, 8) if source else 0o755, uid=uid, gid=gid))
        elif kind == "symlink":
            entries.append(Entry(dest, "symlink", linkname=source, uid=uid, gid=gid))
        else:
            raise OciError(f"{manifest}:{lineno}: unknown kind {kind!r} (file, empty, mkdir, symlink)")
    return entries


# ---------------------------------------------------------------------------------------------- image

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# The one digest form this tool writes and reads. A descriptor's digest becomes a file name under blobs/, so
# anything else (`sha256:../../etc/passwd`, an upper-case or short hex) is refused before it touches a path.
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: object, what: str = "a descriptor") -> str:
    """`digest` if it is a well-formed sha256 digest; OciError naming `what` otherwise."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise OciError(f"{what} has digest {digest!r}: not a sha256 digest (sha256: and 64 lower-case hex digits); "
                       "the layout was hand-edited or is not from ml_image, rebuild or re-pull it")
    return digest


def blob_path(layout: Path, digest: str) -> Path:
    """Where the blob `digest` lives in an OCI layout; the digest is validated first."""
    algo, hexd = check_digest(digest).split(":", 1)
    return layout / "blobs" / algo / hexd



def _place_blob(layout: Path, digest: str, *, source: Path | None = None, data: bytes | None = None) -> None:
    dst = blob_path(layout, digest)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    if data is not None:
        dst.write_bytes(data)
        return
    if source is None:
        raise ValueError(f"blob {digest}: neither data nor a source file to place")
    try:
        os.link(os.path.realpath(source), dst)  # layers are GBs: share the inode with the layer action's output
    except OSError:
        shutil.copyfile(source, dst)


def _stable_status(path: Path | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if path and path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            values[key] = value
    return values


def build_image(layers: list[tuple[str, Path, str]], spec: dict, stable_status: Path | None, out_dir: Path) -> dict:
    """layers: (name, tar path, digest). spec: entrypoint, cmd, env, workdir, user, labels, ports, tag.

    Returns {"manifest_digest", "config_digest", "layers": [...]} and writes the OCI layout into out_dir.
    """
    status = _stable_status(stable_status)
    labels = dict(spec.get("labels", {}))
    labels["org.opencontainers.image.revision"] = status.get("STABLE_GIT_COMMIT", "unknown")
    for key, value in list(labels.items()):
        labels[key] = value.replace("{STABLE_GIT_COMMIT}", status.get("STABLE_GIT_COMMIT", "unknown"))
    out_dir.mkdir(parents=True, exist_ok=True)
    diff_ids, layer_descs, history, layer_info = [], [], [], []
    for name, tar, digest in layers:
        size = os.stat(tar).st_size
        diff_ids.append(digest)
        layer_descs.append({"mediaType": MT_LAYER, "digest": digest, "size": size})
        history.append({"created": EPOCH, "created_by": f"mlenv {name} layer", "comment": name})
        layer_info.append({"name": name, "diff_id": digest, "size": size})
        _place_blob(out_dir, digest, source=tar)
    config_obj = {
        "created": EPOCH,
        "architecture": spec.get("architecture", "amd64"),
        "os": "linux",
        "config": {
            "Entrypoint": spec.get("entrypoint", []),
            "Cmd": spec.get("cmd", []),
            "Env": [f"{k}={v}" for k, v in spec.get("env", {}).items()],
            "WorkingDir": spec.get("workdir", "/"),
            "User": spec.get("user", ""),
            "Labels": labels,
            **({"ExposedPorts": {p: {} for p in spec["ports"]}} if spec.get("ports") else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config = _canonical(config_obj)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    _place_blob(out_dir, config_digest, data=config)
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layer_descs,
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")},
    }
    manifest = _canonical(manifest_obj)
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    _place_blob(out_dir, manifest_digest, data=manifest)
    tag = spec.get("tag", "latest")  # the full NAME:TAG, so `podman load` of the OCI side names it right
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [{
        "mediaType": MT_MANIFEST, "digest": manifest_digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (out_dir / "index.json").write_bytes(_canonical(index))
    (out_dir / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    return {"manifest_digest": manifest_digest, "config_digest": config_digest, "layers": layer_info,
            "labels": labels}


# -------------------------------------------------------------------------------------------- tarball

def write_tarball(layout: Path, out: Path, repo_tag: str) -> None:
    """The OCI layout plus a docker-archive manifest.json in one deterministic tar."""
    index, manifest, _ = read_layout(layout)
    docker_manifest = [{
        "Config": "blobs/" + manifest["config"]["digest"].replace(":", "/"),
        "RepoTags": [repo_tag],
        "Layers": ["blobs/" + d["digest"].replace(":", "/") for d in manifest["layers"]],
    }]
    entries = [
        Entry("oci-layout", "file", source=layout / "oci-layout"),
        Entry("index.json", "file", source=layout / "index.json"),
        Entry("manifest.json", "file", data=_canonical(docker_manifest)),
    ]
    for algo_dir in sorted((layout / "blobs").iterdir()):
        for blob in sorted(algo_dir.iterdir()):
            entries.append(Entry(f"blobs/{algo_dir.name}/{blob.name}", "file", source=blob))
    write_layer(entries, out)


# --------------------------------------------------------------------------------------------- verify

def read_layout(layout: Path) -> tuple[dict, dict, str]:
    try:
        index = json.loads((layout / "index.json").read_bytes())
    except FileNotFoundError:
        raise OciError(f"{layout}: no index.json; this is not an OCI image layout") from None
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise OciError(f"{layout}/index.json lists {len(manifests)} manifests; expected exactly one")
    digest = check_digest(manifests[0].get("digest"), "the manifest in index.json")
    data = _read_blob(layout, digest, what="the manifest")
    return index, json.loads(data), digest


def _read_blob(layout: Path, digest: str, *, what: str) -> bytes:
    path = blob_path(layout, check_digest(digest, what))
    if not path.is_file():
        raise OciError(f"{what} blob {digest} is missing from {layout}/blobs; rebuild the image")
    data = path.read_bytes()
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise OciError(f"{what} blob {digest} is corrupt: its bytes hash to {actual}; rebuild the image")
    return data


def verify_layout(layout: Path, expect_digest: str | None = None) -> dict:
    """Every check a registry or runtime would do, with messages that name the broken piece."""
    index, manifest, digest = read_layout(layout)
    if expect_digest and digest != expect_digest:
        raise OciError(f"{layout}: manifest digest is {digest}, expected {expect_digest} "
                       "(the image was rebuilt or the digest pin is stale)")
    if index["manifests"][0].get("size") != len(_read_blob(layout, digest, what="the manifest")):
        raise OciError(f"{layout}/index.json: the manifest's size does not match its blob")
    cfg_desc = manifest["config"]
    config = json.loads(_read_blob(layout, cfg_desc["digest"], what="the config"))
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(manifest["layers"]):
        raise OciError(f"config lists {len(diff_ids)} diff_ids but the manifest has {len(manifest['layers'])} layers")
    for i, (desc, diff_id) in enumerate(zip(manifest["layers"], diff_ids, strict=True)):
        name = (config.get("history") or [{}] * len(diff_ids))[i].get("comment", f"#{i}")
        path = blob_path(layout, check_digest(desc.get("digest"), f"layer {i} ({name})"))
        check_digest(diff_id, f"the diff_id of layer {i} ({name})")
        if not path.is_file():
            raise OciError(f"layer {i} ({name}) blob {desc['digest']} is missing; rebuild the image")
        actual = _sha256_file(path)
        if actual != desc["digest"]:
            raise OciError(f"layer {i} ({name}) blob {desc['digest']} is corrupt: its bytes hash to {actual}; "
                           "rebuild the image (bazel build <image target>) or re-pull it")
        if path.stat().st_size != desc["size"]:
            raise OciError(f"layer {i} ({name}) has {path.stat().st_size} bytes, the manifest says {desc['size']}")
        if desc["mediaType"] == MT_LAYER and diff_id != desc["digest"]:
            raise OciError(f"layer {i} ({name}): diff_id {diff_id} in the config does not match the layer {desc['digest']}")
    return {"manifest_digest": digest, "layers": len(diff_ids), "config": config}


def verify_tarball(tarball: Path, expect_digest: str | None = None) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="oci-verify-") as tmp, tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        for required in ("oci-layout", "index.json", "manifest.json"):
            if required not in names:
                raise OciError(f"{tarball}: no {required}; not a tarball made by ml_image")
        # By hand, not extractall(filter="data"): the pinned interpreter (Debian's 3.11.2) predates
        # extraction filters. An OCI layout tarball holds only relative files and folders.
        for member in tar.getmembers():
            if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
                raise OciError(f"{tarball}: member {member.name!r} is not a plain relative file or folder; "
                               "not a tarball made by ml_image")
        tar.extractall(tmp)  # noqa: S202 - every member was checked above
        return verify_layout(Path(tmp), expect_digest)


# ----------------------------------------------------------------------------------------------- main

def _read_digest(path: str, what: str = "a layer digest") -> str:
    text = Path(path).read_text().strip()
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", text):
        raise OciError(f"{path}: expected {what} like sha256:<64 hex>, got {text[:80]!r}")
    return text


def _pick_image(paths: list[Path], expect: str | None) -> tuple[Path, str | None]:
    """From an image target's files (layout, .digest, .layers.json): the image and the digest it must have."""
    images = [p for p in paths if p.is_dir() or p.suffix == ".tar"]
    if len(images) != 1:
        raise OciError(f"give one OCI layout folder or image tarball, got {[str(p) for p in paths]}")
    digests = [p for p in paths if p.suffix == ".digest"]
    if expect is None and digests:
        expect = _read_digest(str(digests[0]), what="an image digest")
    return images[0], expect


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oci.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env-layer")
    p.add_argument("--site-packages", type=Path, required=True)
    p.add_argument("--prefix", default="/opt/mlenv")
    p.add_argument("--extra", action="append", default=[], help="DEST=FILE also placed in the layer")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path)
    p.add_argument("--digest-out", type=Path)
    p = sub.add_parser("files-layer")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--digest-out", type=Path)
    p = sub.add_parser("digest")
    p.add_argument("--tar", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("image")
    p.add_argument("--layer", action="append", default=[], help="NAME=TAR=DIGEST_FILE, base first")
    p.add_argument("--label-file", action="append", default=[], help="KEY=FILE: an image label read from a file")
    p.add_argument("--config-json", type=Path, required=True)
    p.add_argument("--stable-status", type=Path)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--digest-out", type=Path, required=True)
    p.add_argument("--layers-out", type=Path)
    p = sub.add_parser("tarball")
    p.add_argument("--layout", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repo-tag", required=True)
    p = sub.add_parser("verify")
    p.add_argument("image", type=Path, nargs="+",
                   help="an OCI layout folder or an image tarball (with its .digest file: checked against it)")
    p.add_argument("--expect-digest")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.cmd in ("env-layer", "files-layer"):
            if args.cmd == "env-layer":
                entries = env_layer_entries(args.site_packages, args.prefix, args.jobs)
                for extra in args.extra:
                    dest, _, src = extra.partition("=")
                    entries.append(Entry(dest.strip("/"), "file", source=Path(src), mode=0o644))
            else:
                entries = files_layer_entries(args.manifest)
            digest, size = write_layer(entries, args.out)
            if args.digest_out:
                args.digest_out.write_text(digest + "\n")
            print(f"{digest} {size} bytes {len(entries)} entries", file=sys.stderr)
        elif args.cmd == "digest":
            args.out.write_text(_sha256_file(args.tar) + "\n")
        elif args.cmd == "image":
            spec = json.loads(args.config_json.read_text())
            for item in args.label_file:
                key, _, path = item.partition("=")
                spec.setdefault("labels", {})[key] = Path(path).read_text().strip()
            layers = []
            for item in args.layer:
                name, tar, digest_file = item.split("=", 2)
                layers.append((name, Path(tar), _read_digest(digest_file)))
            result = build_image(layers, spec, args.stable_status, args.out_dir)
            args.digest_out.write_text(result["manifest_digest"] + "\n")
            if args.layers_out:
                args.layers_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        elif args.cmd == "tarball":
            write_tarball(args.layout, args.out, args.repo_tag)
        elif args.cmd == "verify":
            image, expect = _pick_image(args.image, args.expect_digest)
            check = verify_tarball if image.is_file() else verify_layout
            result = check(image, expect)
            print(f"OK {image}: manifest {result['manifest_digest']}, {result['layers']} layers, every blob verified")
    except OciError as exc:
        print(f"oci: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
