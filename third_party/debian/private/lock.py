"""`tools/bazel run //third_party/debian:lock`: resolve packages.in against Debian bookworm into packages.lock.json.

The tool reads the signed InRelease files of bookworm, bookworm-updates and bookworm-security (checked with
gpgv against Debian's archive keyring), the main/binary-amd64 Packages index of each (checked against the
InRelease sha256), takes the newest version of every package across the three suites, and resolves the
Depends/Pre-Depends closure of the roots in packages.in:

* a dependency already satisfied by a chosen package (or a package providing it) adds nothing;
* otherwise the first alternative that exists, satisfies the version constraint and is not excluded wins;
* a virtual package with several providers and none chosen is an error that names them (pick one in
  packages.in); a dependency whose every alternative is excluded is recorded under "excluded".

The lock pins every .deb by name, version, architecture, URL, sha256 and size, sorted by name, and records a
digest of its inputs (packages.in and the suites) that //third_party/debian:lock_test checks.

snapshot.debian.org is not reachable from our machines, so URLs point at the main mirrors' pools. Those keep a
version only while it is current: after a point release or a security update replaces a locked version, its
URL answers 404 and the fetch of @debian_bookworm fails saying so; the fix is to relock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

COMMAND = "tools/bazel run //third_party/debian:lock"
ARCHITECTURE = "amd64"
COMPONENT = "main"
DEFAULT_HOST = "https://deb.debian.org"
MIRROR_ENV = "MLENV_DEBIAN_MIRROR"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# (suite, archive root under the host). Order is only for display: the newest version across them wins.
SUITES = (
    ("bookworm", "/debian"),
    ("bookworm-updates", "/debian"),
    ("bookworm-security", "/debian-security"),
)
LOCK_FILE = "third_party/debian/packages.lock.json"
INPUT_FILE = "third_party/debian/packages.in"


class LockError(Exception):
    """Anything that stops a relock; the message says what and how to fix it."""


# --- Debian version comparison (Debian Policy 5.6.12) ---------------------------------------------------

def _char_order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_fragment(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _char_order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _char_order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, _, rest = version.rpartition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version a sorts before, equal to or after b."""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return ea - eb
    return _compare_fragment(ua, ub) or _compare_fragment(ra, rb)


def satisfies(version: str, op: str, wanted: str) -> bool:
    c = compare_versions(version, wanted)
    return {"<<": c < 0, "<=": c <= 0, "=": c == 0, ">=": c >= 0, ">>": c > 0}[op]


# --- Packages indexes ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Relation:
    name: str
    op: str = ""
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.op} {self.version})" if self.op else self.name


@dataclass
class Package:
    name: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int
    suite: str
    archive_url: str
    depends: list[list[Relation]] = field(default_factory=list)
    provides: list[Relation] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.archive_url}/{self.filename}"


_RELATION = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?\s*$")


def parse_relations(text: str, where: str) -> list[list[Relation]]:
    clauses = []
    for clause in filter(None, (c.strip() for c in text.split(","))):
        alternatives = []
        for alt in clause.split("|"):
            alt = re.sub(r"\[[^]]*\]|<[^>]*>", "", alt)  # architecture / build-profile restrictions
            match = _RELATION.match(alt)
            if not match:
                raise LockError(f"{where}: cannot parse the relation {alt.strip()!r}")
            name, op, version = match.groups()
            op = {"<": "<=", ">": ">="}.get(op, op) or ""  # obsolete spellings
            alternatives.append(Relation(name, op, version or ""))
        clauses.append(alternatives)
    return clauses


def parse_paragraphs(text: str):
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            yield fields


def parse_packages(text: str, suite: str, archive_url: str) -> list[Package]:
    out = []
    for fields in parse_paragraphs(text):
        where = f"{suite}: {fields.get('Package')}"
        depends = parse_relations(fields.get("Pre-Depends", ""), where) + parse_relations(fields.get("Depends", ""), where)
        out.append(Package(
            name=fields["Package"], version=fields["Version"], architecture=fields["Architecture"],
            filename=fields["Filename"], sha256=fields["SHA256"], size=int(fields["Size"]), suite=suite,
            archive_url=archive_url, depends=depends,
            provides=[alts[0] for alts in parse_relations(fields.get("Provides", ""), where)]))
    return out


class Universe:
    """The newest version of every package across the suites, and who provides each virtual name."""

    def __init__(self, packages: list[Package]):
        self.packages: dict[str, Package] = {}
        for pkg in packages:
            if pkg.architecture not in (ARCHITECTURE, "all"):
                continue
            current = self.packages.get(pkg.name)
            if current is None or compare_versions(pkg.version, current.version) > 0:
                self.packages[pkg.name] = pkg
        self.providers: dict[str, list[tuple[Package, Relation]]] = {}
        for pkg in self.packages.values():
            for provided in pkg.provides:
                self.providers.setdefault(provided.name, []).append((pkg, provided))

    def satisfiers(self, rel: Relation) -> list[Package]:
        """Packages that satisfy `rel`: the real package of that name, then providers (sorted by name)."""
        found = []
        real = self.packages.get(rel.name)
        if real and (not rel.op or satisfies(real.version, rel.op, rel.version)):
            found.append(real)
        for pkg, provided in sorted(self.providers.get(rel.name, []), key=lambda p: p[0].name):
            # A versioned dependency is only satisfied by a versioned Provides (Policy 7.5).
            if not rel.op or (provided.op == "=" and satisfies(provided.version, rel.op, rel.version)):
                found.append(pkg)
        return found


# --- Resolution ---------------------------------------------------------------------------------------

def read_inputs(text: str) -> tuple[list[str], dict[str, str]]:
    roots, excluded = [], {}
    for number, raw in enumerate(text.splitlines(), 1):
        line, _, comment = raw.partition("#")
        line = line.strip()
        if not line:
            continue
        name = line.removeprefix("-").strip()
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", name):
            raise LockError(f"{INPUT_FILE}:{number}: {raw.strip()!r} is not a package name (one per line; "
                            f"`-name  # why` excludes one)")
        if line.startswith("-"):
            if not comment.strip():
                raise LockError(f"{INPUT_FILE}:{number}: say why {name} is excluded: `-{name}  # reason`")
            excluded[name] = comment.strip()
        else:
            roots.append(name)
    overlap = sorted(set(roots) & set(excluded))
    if overlap:
        raise LockError(f"{INPUT_FILE}: {', '.join(overlap)} both listed and excluded; keep one")
    return roots, excluded


def resolve(universe: Universe, roots: list[str], excluded: dict[str, str]):
    """The closure of `roots`: (chosen packages by name, {excluded name: sorted requirers})."""
    chosen: dict[str, Package] = {}
    skipped: dict[str, set[str]] = {}

    def is_excluded(pkg_or_name) -> bool:
        name = getattr(pkg_or_name, "name", pkg_or_name)
        return name in excluded

    queue = []
    for name in roots:
        if name not in universe.packages:
            raise LockError(f"{INPUT_FILE}: no package {name!r} in bookworm {COMPONENT}/{ARCHITECTURE}; "
                            f"check the name (`apt-cache policy {name}` on a bookworm machine)")
        chosen[name] = universe.packages[name]
        queue.append(chosen[name])

    while queue:
        pkg = queue.pop(0)
        for alternatives in pkg.depends:
            if any(c.name in chosen for alt in alternatives for c in universe.satisfiers(alt)):
                continue
            if all(is_excluded(alt.name) for alt in alternatives):
                for alt in alternatives:
                    skipped.setdefault(alt.name, set()).add(pkg.name)
                continue
            pick = None
            for alt in alternatives:
                if is_excluded(alt.name):
                    continue
                candidates = [c for c in universe.satisfiers(alt) if not is_excluded(c)]
                if len(candidates) > 1 and candidates[0].name != alt.name:
                    raise LockError(
                        f"{pkg.name} depends on {alt}, which {len(candidates)} packages provide: "
                        f"{', '.join(c.name for c in candidates)}. Add the one you want to {INPUT_FILE} "
                        f"(or exclude {alt.name} there), then run `{COMMAND}`")
                if candidates:
                    pick = candidates[0]
                    break
            if pick is None:
                wanted = " | ".join(str(a) for a in alternatives)
                raise LockError(f"{pkg.name} {pkg.version} depends on {wanted}, which nothing in bookworm satisfies "
                                f"(excluded: {', '.join(a.name for a in alternatives if is_excluded(a.name)) or 'none'})")
            chosen[pick.name] = pick
            queue.append(pick)

    # Every kept dependency must hold for the versions chosen (a later pick can't break an earlier one, but
    # a root may be older than what another package needs).
    for pkg in chosen.values():
        for alternatives in pkg.depends:
            if all(is_excluded(a.name) for a in alternatives):
                continue
            if not any(c.name in chosen for alt in alternatives for c in universe.satisfiers(alt)):
                raise LockError(f"{pkg.name} {pkg.version} needs {' | '.join(map(str, alternatives))}, "
                                f"which the chosen versions do not satisfy")
    return chosen, {name: sorted(by) for name, by in sorted(skipped.items())}


# --- Inputs digest and the lock file -------------------------------------------------------------------

def inputs_digest(packages_in: bytes) -> str:
    """What a lock was made from: packages.in, the architecture and the suites. Shared with lock_test."""
    blob = packages_in + b"\0" + json.dumps([ARCHITECTURE, COMPONENT, SUITES]).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def lock_document(digest: str, releases: list[dict], chosen: dict[str, Package], skipped: dict[str, list[str]],
                  requirers: dict[str, list[str]]) -> dict:
    return {
        "comment": f"Generated by `{COMMAND}` from {INPUT_FILE}; do not edit by hand.",
        "inputs": digest,
        "architecture": ARCHITECTURE,
        "suites": releases,
        "packages": [
            {
                "name": p.name,
                "version": p.version,
                "architecture": p.architecture,
                "suite": p.suite,
                "url": p.url,
                "sha256": p.sha256,
                "size": p.size,
                "required_by": requirers.get(p.name, []),
            }
            for p in sorted(chosen.values(), key=lambda p: p.name)
        ],
        "excluded": skipped,
    }


def dump_lock(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=True) + "\n"


def requirers_of(chosen: dict[str, Package], universe: Universe, roots: list[str]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {name: {"packages.in"} for name in roots}
    for pkg in chosen.values():
        for alternatives in pkg.depends:
            for alt in alternatives:
                for sat in universe.satisfiers(alt):
                    if sat.name in chosen and sat.name != pkg.name:
                        out.setdefault(sat.name, set()).add(pkg.name)
    return {name: sorted(by) for name, by in out.items()}


# --- Fetching ------------------------------------------------------------------------------------------

def fetch(url: str) -> bytes:
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise LockError(f"cannot fetch {url}: only http:// and https:// mirrors are supported; set {MIRROR_ENV} "
                        f"to such a URL")
    try:
        with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - scheme checked above
            return response.read()
    except OSError as exc:
        raise LockError(f"cannot fetch {url}: {exc}. Behind a mirror, set {MIRROR_ENV} "
                        f"(it replaces {DEFAULT_HOST} in every URL)") from exc


def verified_release(raw: bytes, suite: str, skip_signature: bool) -> str:
    if skip_signature:
        text = raw.decode()
        body = text.split("\n\n", 1)[1] if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----") else text
        return body.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0]
    gpgv = shutil.which("gpgv")
    if not gpgv or not Path(KEYRING).exists():
        raise LockError(f"cannot check the signature of {suite}'s InRelease: needs gpgv and {KEYRING} "
                        f"(apt-get install gpgv debian-archive-keyring), or pass --skip-signature-check")
    with tempfile.TemporaryDirectory() as tmp:
        signed = Path(tmp, "InRelease")
        signed.write_bytes(raw)
        out = Path(tmp, "Release")
        proc = subprocess.run([gpgv, "--quiet", "--keyring", KEYRING, "--output", str(out), str(signed)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LockError(f"{suite}'s InRelease does not verify against {KEYRING}:\n{proc.stderr}")
        return out.read_text()


def release_hashes(release: str) -> dict[str, tuple[str, int]]:
    hashes, in_sha256 = {}, False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        if in_sha256:
            digest, size, name = line.split()
            hashes[name] = (digest, int(size))
    return hashes


def load_suite(host: str, suite: str, root: str, skip_signature: bool) -> tuple[dict, list[Package]]:
    base = f"{host}{root}/dists/{suite}"
    release = verified_release(fetch(f"{base}/InRelease"), suite, skip_signature)
    fields = next(parse_paragraphs(release))
    index = f"{COMPONENT}/binary-{ARCHITECTURE}/Packages.xz"
    expected = release_hashes(release).get(index)
    if expected is None:
        raise LockError(f"{suite}'s InRelease lists no {index}")
    data = fetch(f"{base}/{index}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected[0]:
        raise LockError(f"{base}/{index} has sha256 {digest}, its InRelease says {expected[0]}; the mirror is "
                        f"mid-update: retry in a few minutes")
    archive_url = f"{DEFAULT_HOST}{root}"  # the lock always names the canonical host; fetches may rewrite it
    packages = parse_packages(lzma.decompress(data).decode(), suite, archive_url)
    info = {"name": suite, "url": archive_url, "version": fields.get("Version", ""), "date": fields.get("Date", "")}
    return info, packages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")))
    parser.add_argument("--skip-signature-check", action="store_true",
                        help="trust InRelease without gpgv (only where gpgv or the keyring cannot be installed)")
    args = parser.parse_args(argv)
    if not (args.workspace / "WORKSPACE").exists():
        sys.exit(f"lock: run me with `{COMMAND}` (no WORKSPACE in {args.workspace})")
    host = os.environ.get(MIRROR_ENV, "").rstrip("/") or DEFAULT_HOST
    try:
        packages_in = (args.workspace / INPUT_FILE).read_bytes()
        roots, excluded = read_inputs(packages_in.decode())
        releases, everything = [], []
        for suite, root in SUITES:
            info, packages = load_suite(host, suite, root, args.skip_signature_check)
            print(f"lock: {suite} {info['version']} ({info['date']}): {len(packages)} packages", file=sys.stderr)
            releases.append(info)
            everything += packages
        universe = Universe(everything)
        chosen, skipped = resolve(universe, roots, excluded)
    except LockError as exc:
        sys.exit(f"lock: {exc}")
    unused = sorted(set(excluded) - set(skipped))
    if unused:
        print(f"lock: note: excluded but never depended on: {', '.join(unused)}", file=sys.stderr)
    document = lock_document(inputs_digest(packages_in), releases, chosen, skipped,
                             requirers_of(chosen, universe, roots))
    (args.workspace / LOCK_FILE).write_text(dump_lock(document))
    total = sum(p.size for p in chosen.values())
    print(f"lock: wrote {LOCK_FILE}: {len(chosen)} packages, {total / 1e6:.1f} MB of .deb files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
