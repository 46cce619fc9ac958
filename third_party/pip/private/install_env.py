"""Installs one hash-locked requirements file into ONE flat site-packages tree, for the @pypi repository.

Run by //third_party/pip/private:pip_repository.bzl at fetch time with the pinned interpreter; standard
library only. It:

1. parses the lock (pip's requirements format as written by `uv pip compile --generate-hashes`),
   refusing any requirement that is not pinned with `==` and at least one sha256;
2. keeps the lock's index options that can work on this machine (a `--find-links` folder that exists, an
   index whose host resolves) and says which it dropped, so one lock serves both this offline-ish network
   and users with full internet;
3. has uv install every wheel (no sdist builds, no dependency resolution, every hash verified) into
   `site-packages/` with byte code compiled once, so tests never write .pyc files into the shared tree;
4. writes `manifest.json` (distribution -> version, requires) and the BUILD files of the repository:
   `//:env` for the whole tree and one `//<dist>` target per distribution.

A hash mismatch fails with the distribution, the expected and the computed hash, and what to do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_INDEX = "https://pypi.org/simple"
# Part of lock_digest.txt, the file Bazel tracks in place of the untracked site-packages folder: bump it
# whenever this installer changes what the tree holds (2: unchecked-hash byte code), so every consumer reruns.
TREE_FORMAT = 4  # 3: byte code names its source relative to PYC_PREFIX, not the install path; 4: RECORD rows
#                   of the dropped console scripts removed (their hashes covered the interpreter's path)
PYC_PREFIX = "site-packages"


class LockError(Exception):
    """A lock file that cannot be installed as written; the message says what to change."""


@dataclass
class Requirement:
    name: str  # as written in the lock
    version: str
    extras: str
    hashes: list[str]
    required_by: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return normalize(self.name)


@dataclass
class Lock:
    requirements: list[Requirement]
    index_url: str | None
    extra_index_urls: list[str]
    find_links: list[str]


def normalize(name: str) -> str:
    """PEP 503 name, with '_' so it is also a valid Bazel package name: grpcio-tools -> grpcio_tools."""
    return re.sub(r"[-_.]+", "_", name).lower()


_REQ = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]*\])?\s*==\s*(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash[= ](?P<algo>\w+):(?P<digest>[0-9a-fA-F]+)")
_VIA = re.compile(r"^#\s+(?:via\s+)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*$")


def parse_lock(text: str, path: str) -> Lock:
    """Parses the subset of the requirements format that uv writes for a hashed lock."""
    logical: list[tuple[int, str, list[str]]] = []  # (line number, joined requirement line, following comments)
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if buf:
            buf += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                logical.append((start, buf, []))
                buf = ""
            continue
        if not stripped:
            continue
        if stripped.startswith("#"):
            if logical:
                logical[-1][2].append(stripped)
            continue
        if stripped.endswith("\\"):
            buf, start = stripped.rstrip("\\").strip(), number
        else:
            logical.append((number, stripped, []))
    if buf:
        raise LockError(f"{path}: the file ends inside a continued line (a trailing backslash)")

    index_url, extras_idx, find_links, reqs = None, [], [], []
    for number, line, comments in logical:
        if line.startswith("-"):
            option, _, value = line.partition(" ")
            value = value.strip()
            if option in ("--index-url", "-i"):
                index_url = value
            elif option == "--extra-index-url":
                extras_idx.append(value)
            elif option in ("--find-links", "-f"):
                find_links.append(value)
            else:
                raise LockError(f"{path}:{number}: option {option!r} is not supported in an mlenv lock; "
                                f"regenerate it with `tools/bazel run //third_party/pip:lock`")
            continue
        match = _REQ.match(line)
        if not match:
            raise LockError(f"{path}:{number}: {line.split()[0]!r} is not pinned with '=='; every requirement in a "
                            f"lock must be exact. Regenerate it with `tools/bazel run //third_party/pip:lock`")
        hashes = [f"{m['algo']}:{m['digest'].lower()}" for m in _HASH.finditer(line)]
        if not any(h.startswith("sha256:") for h in hashes):
            raise LockError(f"{path}:{number}: {match['name']}=={match['version']} has no --hash=sha256:...; "
                            f"every file must be pinned. Regenerate with `tools/bazel run //third_party/pip:lock`")
        req = Requirement(match["name"], match["version"], match["extras"] or "", hashes)
        for comment in comments:
            if comment.split() == ["#", "via"]:
                continue  # the header of a multi-line "via" list
            via = _VIA.match(comment)
            if via and not via["name"].startswith("-r"):
                req.required_by.append(normalize(via["name"]))
        reqs.append(req)
    if not reqs:
        raise LockError(f"{path}: no requirements found")
    return Lock(reqs, index_url, extras_idx, find_links)


_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s]+@")


def redact(text: str) -> str:
    """`text` with the user info of every URL in it replaced (`https://user:token@host` -> `https://***@host`):
    index URLs of private indexes carry tokens, and what this prints ends up in CI logs. (The same rule as
    ml/engine/redact.py, which this standard-library-only tool run by a repository rule cannot import.)"""
    return _USERINFO.sub(r"\1***@", str(text))


def host_resolves(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def usable_sources(lock: Lock, default_index: str, log) -> list[str]:
    """uv arguments for the sources that can work here; unreachable ones are reported and dropped."""
    args: list[str] = []
    index = lock.index_url or default_index
    if index.startswith("file:") or host_resolves(index):
        args += ["--index-url", index]
    else:
        log(redact(f"index {index} is unreachable (its host does not resolve); using only the other sources"))
        args += ["--no-index"]
    for url in lock.extra_index_urls:
        if url.startswith("file:") or host_resolves(url):
            args += ["--extra-index-url", url]
        else:
            log(redact(f"extra index {url} is unreachable (its host does not resolve); skipped"))
    for link in lock.find_links:
        if "://" in link and not link.startswith("file:"):
            if host_resolves(link):
                args += ["--find-links", link]
            else:
                log(redact(f"find-links {link} is unreachable; skipped"))
        elif Path(link.removeprefix("file://")).is_dir():
            args += ["--find-links", link]
        else:
            log(redact(f"find-links folder {link} does not exist on this machine; skipped"))
    return args


def explain_uv_failure(stderr: str, lock_label: str) -> str:
    mismatch = re.search(r"Hash mismatch for `(?P<dist>[^`]+)`.*?Expected:\s*(?P<expected>.*?)\s*Computed:\s*(?P<got>\S+)",
                         stderr, re.S)
    if mismatch:
        expected = " ".join(mismatch["expected"].split())
        return (f"mlenv: hash mismatch for {mismatch['dist']}: {lock_label} pins {expected}, but the file served "
                f"hashes to {mismatch['got']}. Nothing was installed.\n"
                f"  If you edited the lock by hand, regenerate it: tools/bazel run //third_party/pip:lock\n"
                f"  If you did not, the file changed upstream or in transit: do not relock blindly, find out why.")
    return f"mlenv: installing {lock_label} failed; uv said:\n{stderr.strip()}"


def write_build_files(repo: Path, lock: Lock, digest: str, variant: str,
                      aliases: dict[str, str] | None = None) -> None:
    known = {r.key for r in lock.requirements}
    for name, target in (aliases or {}).items():
        if normalize(target) not in known:
            raise LockError(f"replace_packages maps {name} to {target}, which the {variant} lock does not pin: "
                            f"relock with `tools/bazel run //third_party/pip:lock`")
    requires: dict[str, set[str]] = {r.key: set() for r in lock.requirements}
    for req in lock.requirements:
        for parent in req.required_by:
            if parent in requires and parent != req.key:
                requires[parent].add(req.key)
    header = "# Generated by //third_party/pip/private:install_env.py. Do not edit; relock instead.\n"
    (repo / "BUILD.bazel").write_text(header + f'''package(default_visibility = ["//visibility:public"])

exports_files(["lock_digest.txt", "manifest.json"])

# The whole locked environment ({variant} variant) as ONE directory in the runfiles: a test reaches the
# ~60k files through a single symlink instead of one entry per file. Bazel does not track the contents of
# a source directory, so lock_digest.txt (which changes with every relock) is an input of every consumer.
py_library(
    name = "env",
    data = [
        "lock_digest.txt",
        "site-packages",
    ],
    imports = ["site-packages"],
)
''')
    for req in lock.requirements:
        pkg = repo / req.key
        pkg.mkdir(exist_ok=True)
        deps = ['"//:env"'] + [f'"//{d}"' for d in sorted(requires[req.key]) if d in known]
        (pkg / "BUILD.bazel").write_text(header + f'''package(default_visibility = ["//visibility:public"])

# {req.name}=={req.version}: lives in the one flat tree (//:env); deps mirror its locked requirements so
# `bazel query` answers "what does this target pull in".
py_library(
    name = "{req.key}",
    deps = [{", ".join(deps)}],
)
''')
    for name, target in sorted((aliases or {}).items()):
        pkg = repo / normalize(name)
        if normalize(name) in known:
            continue  # the lock pins the original too: its own target stands (lock.py never writes that)
        pkg.mkdir(exist_ok=True)
        (pkg / "BUILD.bazel").write_text(header + f'''package(default_visibility = ["//visibility:public"])

# The {variant} variant locks {target} instead of {name} (replace_packages in toolchains/accelerators.json):
# both install the same module, so targets keep depending on @pypi//{normalize(name)}.
alias(
    name = "{normalize(name)}",
    actual = "//{normalize(target)}",
)
''')
    manifest = {
        "variant": variant,
        "lock_digest": digest,
        "distributions": {
            r.key: {"name": r.name, "version": r.version, "hashes": r.hashes, "requires": sorted(requires[r.key])}
            for r in lock.requirements
        },
    }
    if aliases:  # only where a variant replaces a package: other variants' manifests stay as they were
        manifest["aliases"] = {normalize(k): normalize(v) for k, v in sorted(aliases.items())}
    (repo / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (repo / "lock_digest.txt").write_text(digest + "\n")


def drop_script_records(site: Path) -> None:
    """Removes the rows of the deleted `bin/` scripts from every RECORD: they are gone, and each row's sha256
    covers a shebang naming this output base's interpreter, which made RECORD (and the tree, and the image
    layer built from it) differ between checkouts and Bazel versions."""
    for record in site.glob("*.dist-info/RECORD"):
        rows = record.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [row for row in rows if not row.startswith("bin/")]
        if len(kept) != len(rows):
            record.write_text("".join(kept), encoding="utf-8")


def compile_env(environ: dict[str, str]) -> dict[str, str]:
    """The byte compiler's environment: the caller's without any PYTHON* setting, plus a fixed hash seed.

    This installer runs isolated (-I), but its children inherit the shell that started Bazel, where
    PYTHONPYCACHEPREFIX would put the byte code outside the tree and PYTHONOPTIMIZE would write .opt-N.pyc
    instead; the tree is a source directory whose contents Bazel does not track, so nothing would notice."""
    env = {key: value for key, value in environ.items() if not key.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", required=True, type=Path)
    parser.add_argument("--lock-label", required=True, help="how to name the lock in messages")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--repo", required=True, type=Path, help="the repository folder to fill")
    parser.add_argument("--uv", required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--default-index", default=DEFAULT_INDEX)
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=DIST",
                        help="@pypi//NAME names DIST (a package the variant replaces: replace_packages)")
    parser.add_argument("--find-links", action="append", default=[],
                        help="a local wheel folder of the variant (toolchains/accelerators.json), tried where it exists")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"mlenv/pip: {redact(message)}", file=sys.stderr)

    text = args.lock.read_text()
    try:
        lock = parse_lock(text, args.lock_label)
    except LockError as exc:
        print(f"mlenv: {exc}", file=sys.stderr)
        return 2
    # Wheel folders are machine-specific, so locks do not name them: the variant's come from its config.
    lock.find_links.extend(link for link in args.find_links if link not in lock.find_links)
    # The interpreter by content, not path: a path under one output base would make the digest (an input of
    # every action on the environment) differ between checkouts of the same tree. Both the `python3` wrapper
    # given (it sets the library path) and the binary it ran, which is this process's own interpreter.
    interpreter = hashlib.sha256(Path(args.python).resolve().read_bytes()
                                 + b"\0" + Path(sys.executable).resolve().read_bytes()).hexdigest()
    digest = "sha256:" + hashlib.sha256(f"{TREE_FORMAT}\n{args.variant}\n{interpreter}\n{text}".encode()).hexdigest()

    sanitized = args.repo / "requirements.pinned.txt"
    sanitized.write_text("".join(
        f"{r.name}{r.extras}=={r.version} " + " ".join(f"--hash={h}" for h in r.hashes) + "\n"
        for r in lock.requirements))
    site = args.repo / "site-packages"
    if site.exists():
        shutil.rmtree(site)
    cmd = [args.uv, "pip", "install", "--no-config", "--target", str(site), "--python", args.python,
           "--no-deps", "--require-hashes", "--no-build",
           # Any source may serve a file: --require-hashes accepts only the exact files the lock pinned, so the
           # index that holds a file cannot change what is installed (which index a package may come from is
           # decided when locking: lock.py).
           "--index-strategy", "unsafe-best-match", "--quiet",
           *usable_sources(lock, args.default_index, log), "-r", str(sanitized)]
    log(f"installing {len(lock.requirements)} distributions from {args.lock_label} ({args.variant})")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(redact(explain_uv_failure(proc.stderr, args.lock_label)), file=sys.stderr)
        return 1
    # Console scripts carry this machine's interpreter path in their shebang and are not importable code:
    # drop them so the tree is the same on every machine (use `python -m tensorboard.main`, `-m mlflow`).
    shutil.rmtree(site / "bin", ignore_errors=True)
    drop_script_records(site)
    # Byte code, compiled once so tests never write .pyc files into the shared tree. uv would write
    # timestamp-based .pyc (install time in every header), making two installs of one lock differ in ~18k
    # files: every action that takes the environment as input would then miss a shared remote cache.
    # Unchecked-hash .pyc depend only on the source and the file name compiled into them; that name is
    # written relative (`site-packages/torch/nn/...`, compileall's stripdir/prependdir), never this output
    # base's absolute path, so checkouts at any path produce identical trees. Tracebacks, `inspect` and
    # TorchScript still see the real path: importing from a .pyc whose source exists, Python rewrites every
    # code object's co_filename to the source it found (importlib's _fix_co_filename). install_env_test
    # checks both. A fixed hash seed keeps compile order effects out.
    log("compiling byte code (unchecked-hash, path-free)")
    proc = subprocess.run([args.python, "-S", "-B", "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash",
                           "-s", str(site), "-p", PYC_PREFIX, str(site)],
                          capture_output=True, text=True, env=compile_env(os.environ))
    if proc.returncode not in (0, 1):  # 1: some file did not compile (e.g. py2 templates in a package); fine
        print(f"mlenv/pip: compiling byte code failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}", file=sys.stderr)
        return 1
    aliases = dict(alias.split("=", 1) for alias in args.alias)
    try:
        write_build_files(args.repo, lock, digest, args.variant, aliases)
    except LockError as exc:
        print(f"mlenv: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
