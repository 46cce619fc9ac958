"""`tools/bazel run //third_party/pip:lock`: relock requirements.in for every accelerator variant with uv.

For each variant in //toolchains:accelerators.json it resolves requirements.in with torch pinned to the
variant's build, for CPython 3.11 on manylinux_2_28 x86_64, with a sha256 for every file,
and writes third_party/pip/requirements_lock_<variant>.txt.

Which index serves which package is pinned, never "the highest version anywhere": the variant's extra index
(or its local wheel folder, which holds the same files) is an *explicit* source that serves only the
variant's `index_packages` (torch); every other package resolves from PyPI alone. Each locked package
records where it came from (`# from ...`), and the lock is refused if any source breaks that rule.

A variant may replace a requirement of requirements.in by another distribution (`replace_packages`): the CUDA
variant locks `onnxruntime-gpu` instead of `onnxruntime`, two wheels that install the same `onnxruntime`
module and so must never both be installed. The header names each replacement.

The header records a digest of the inputs and one of the body; //third_party/pip:lock_test recomputes both
(catching a requirements.in edited without relocking, and a pin or hash edited by hand) and checks every
package's source. The header names no machine-specific path: wheel folders come from the variant's config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from third_party.pip.private import install_env

PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
DEFAULT_INDEX = "https://pypi.org/simple"
COMMAND = "tools/bazel run //third_party/pip:lock"


WHEELHOUSE = "find-links (toolchains/accelerators.json)"  # how a body names a local wheel folder source


def inputs_digest(requirements_in: bytes, variant: dict) -> str:
    """What a lock was made from: requirements.in and the variant's pins. Shared with lock_test."""
    keys = ("torch", "extra_index_urls", "find_links", "index_packages")
    pins = {k: variant.get(k) for k in keys}
    if variant.get("replace_packages"):  # only where set: adding the key left the other variants' locks as they were
        pins["replace_packages"] = variant["replace_packages"]
    pins = json.dumps(pins, sort_keys=True)
    blob = requirements_in + b"\0" + pins.encode() + b"\0" + PYTHON_VERSION.encode() + b"\0" + PLATFORM.encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def body_digest(body: str) -> str:
    """The digest of everything after the header (the pins, hashes and sources)."""
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def split_lock(lock_text: str) -> tuple[str, str]:
    """(header, body): the header ends at the first blank line."""
    header_text, sep, body = lock_text.partition("\n\n")
    return header_text + sep, body


def recorded_digest(lock_text: str, field: str = "inputs") -> str | None:
    for line in split_lock(lock_text)[0].splitlines():
        if line.startswith(f"# {field}: "):
            return line.split(": ", 1)[1].strip()
    return None


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sources(body: str) -> dict[str, str]:
    """Each locked package's recorded source (`# from ...`), by normalized name."""
    found, current = {}, None
    for line in body.splitlines():
        match = _PIN.match(line)
        if match:
            current = normalize(match[1])
        elif current and line.strip().startswith("# from "):
            found[current] = line.strip()[len("# from "):]
    return found


def allowed_sources(variant: dict) -> tuple[set[str], set[str]]:
    """(sources the variant's index packages may come from, the source of everything else)."""
    return set(variant.get("extra_index_urls", [])) | {WHEELHOUSE}, {DEFAULT_INDEX}


def source_violations(body: str, variant: dict) -> list[str]:
    """Packages whose recorded source breaks the variant's index pinning, or that record none."""
    special = {normalize(n) for n in variant.get("index_packages", [])}
    index_sources, default_sources = allowed_sources(variant)
    recorded = sources(body)
    problems = []
    for line in body.splitlines():
        match = _PIN.match(line)
        if not match:
            continue
        name = normalize(match[1])
        allowed = index_sources if name in special else default_sources
        got = recorded.get(name)
        if got not in allowed:
            problems.append(f"{name}: from {got or 'an unrecorded source'}, allowed: {', '.join(sorted(allowed))}")
    return problems


def replacement_name(requirement: str) -> str:
    """The distribution a `replace_packages` value names: `onnxruntime-gpu[cuda,cudnn]==1.31.1` -> onnxruntime-gpu."""
    match = _PIN.match(requirement) or re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if not match:
        sys.exit(f"lock: replace_packages value {requirement!r} is not a requirement; write e.g. "
                 f"'onnxruntime-gpu==1.31.1' (toolchains/accelerators.json)")
    return match[1] if match.re is _PIN else match[0]


def replace_requirements(reqs: list[str], variant: dict) -> list[str]:
    """requirements.in's lines with the variant's replacements applied; a replacement of a package that
    requirements.in does not name is refused (a stale config would otherwise be silently ignored)."""
    replace = {normalize(k): v for k, v in (variant.get("replace_packages") or {}).items()}
    out, used = [], set()
    for req in reqs:
        name = re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*", req)
        key = normalize(name[0]) if name else None
        if key in replace:
            out.append(replace[key])
            used.add(key)
        else:
            out.append(req)
    unused = sorted(set(replace) - used)
    if unused:
        sys.exit(f"lock: replace_packages names {', '.join(unused)}, which requirements.in does not require; "
                 f"remove the entry from toolchains/accelerators.json or add the package to requirements.in")
    return out


def load_variants(workspace: Path) -> tuple[str, dict]:
    data = json.loads((workspace / "toolchains/accelerators.json").read_text())
    return data["default"], data["variants"]


def lock_path(workspace: Path, variant: dict) -> Path:
    package, _, name = variant["lock"].removeprefix("//").partition(":")
    return workspace / package / name


def header(variant_name: str, variant: dict, digest: str, body: str) -> str:
    only = ", ".join(variant.get("index_packages", [])) or "nothing"
    lines = [
        f"# mlenv lock, {variant_name} variant: {variant['description']}",
        f"# Generated by `{COMMAND}` (uv); do not edit by hand.",
        f"# Resolved for CPython {PYTHON_VERSION} on {PLATFORM}; every file is pinned by sha256.",
        f"# Sources: the extra index serves {only}; everything else is from {DEFAULT_INDEX} (`# from` per package).",
        *(f"# Replaces {name} with {replacement_name(req)} ({req}): both install the same module."
          for name, req in sorted((variant.get("replace_packages") or {}).items())),
        f"# inputs: {digest}",
        f"# body: {body_digest(body)}",
        f"--index-url {DEFAULT_INDEX}",
    ]
    lines += [f"--extra-index-url {url}" for url in variant.get("extra_index_urls", [])]
    return "\n".join(lines) + "\n\n"


def _requirements(requirements_in: Path) -> list[str]:
    reqs = []
    for raw in requirements_in.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-"):
            sys.exit(f"lock: {requirements_in}: option {line.split()[0]!r} is not supported; indexes are set per "
                     f"variant in toolchains/accelerators.json")
        if line:
            reqs.append(line)
    return reqs


def _project(requirements_in: Path, variant: dict, index_source: tuple[str, str] | None) -> str:
    """A throwaway pyproject.toml: requirements.in as dependencies, the variant's index as an explicit source
    of its index packages only (uv pip compile honours tool.uv.sources; plain requirement files cannot)."""
    # The variant's torch build (an override would lose its source) and its replacements (replace_packages).
    reqs = [f"torch=={variant['torch']}" if _PIN.match(r) and normalize(_PIN.match(r)[1]) == "torch" else r
            for r in replace_requirements(_requirements(requirements_in), variant)]
    deps = "".join(f"    {json.dumps(r)},\n" for r in reqs)
    text = f'[project]\nname = "mlenv-lock"\nversion = "0"\nrequires-python = "=={PYTHON_VERSION}.*"\ndependencies = [\n{deps}]\n'
    if index_source and variant.get("index_packages"):
        kind, url = index_source
        fmt = 'format = "flat"\n' if kind == "find-links" else ""
        text += f'\n[[tool.uv.index]]\nname = "variant"\nurl = {json.dumps(url)}\n{fmt}explicit = true\n'
        text += "\n[tool.uv.sources]\n" + "".join(f'{json.dumps(p)} = {{ index = "variant" }}\n'
                                                   for p in variant["index_packages"])
    return text


def _index_source(variant: dict, log) -> tuple[str, str] | None:
    """Where the variant's index packages come from on this machine: its extra index if the host resolves,
    else a local wheel folder (find_links) that exists."""
    for url in variant.get("extra_index_urls", []):
        if install_env.host_resolves(url):
            return ("index", url)
        log(f"extra index {url} is unreachable (its host does not resolve)")
    for link in variant.get("find_links", []):
        if Path(link).is_dir():
            return ("find-links", link)
    if variant.get("index_packages"):
        sys.exit(f"lock: no source for {', '.join(variant['index_packages'])}: none of the variant's extra indexes "
                 f"resolves and none of its find_links folders exists")
    return None


def compile_variant(uv: str, workspace: Path, name: str, variant: dict, index: str) -> None:
    requirements_in = workspace / "third_party/pip/requirements.in"
    digest = inputs_digest(requirements_in.read_bytes(), variant)
    target = lock_path(workspace, variant)

    def log(message: str) -> None:
        print(f"lock[{name}]: {install_env.redact(message)}", file=sys.stderr)

    index_source = _index_source(variant, log)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp, "pyproject.toml")
        project.write_text(_project(requirements_in, variant, index_source))
        out = Path(tmp, "lock.txt")
        if target.exists():  # uv keeps the versions it finds in the output file: relocking moves no other pin
            out.write_text(split_lock(target.read_text())[1])
        if index.startswith("file:") or install_env.host_resolves(index):
            source_args = ["--index-url", index]
        else:
            sys.exit(f"lock[{name}]: the default index {install_env.redact(index)} is unreachable; locking needs it")
        cmd = [uv, "pip", "compile", "--no-config", str(project),
               "--generate-hashes", "--no-header", "--emit-index-annotation", "--python-version", PYTHON_VERSION,
               "--python-platform", PLATFORM, "--index-strategy", "first-index", "--quiet", *source_args,
               "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"lock[{name}]: uv could not resolve third_party/pip/requirements.in:\n{proc.stderr}")
        body = re.sub(r"mlenv-lock \([^)]*pyproject\.toml\)", "-r third_party/pip/requirements.in", out.read_text())
        if index != DEFAULT_INDEX:  # a mirror of PyPI: record PyPI, the source the mirror stands for
            body = body.replace(f"# from {index}", f"# from {DEFAULT_INDEX}")
        if index_source and index_source[0] == "find-links":
            folder = index_source[1]
            body = re.sub(rf"# from (file://)?{re.escape(folder)}/?$", f"# from {WHEELHOUSE}", body, flags=re.M)
    problems = source_violations(body, variant)
    if problems:
        sys.exit(f"lock[{name}]: refusing to write a lock whose sources break the variant's index pinning:\n  "
                 + "\n  ".join(problems))
    target.write_text(header(name, variant, digest, body) + body)
    count = sum(1 for line in body.splitlines() if _PIN.match(line))
    print(f"lock[{name}]: wrote {target.relative_to(workspace)} ({count} distributions)")


def compile_uv(uv: str, workspace: Path) -> None:
    target = workspace / "third_party/pip/uv_requirements.txt"
    pin = next(line.split()[0] for line in target.read_text().splitlines() if line.startswith("uv=="))
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "uv.in"), Path(tmp, "uv.txt")
        src.write_text(pin + "\n")
        subprocess.run([uv, "pip", "compile", "--no-config", str(src), "--generate-hashes", "--no-header",
                        "--no-annotate", "--quiet", "-o", str(out)], check=True)
        comments = [line for line in target.read_text().splitlines() if line.startswith("#")]
        target.write_text("\n".join(comments) + "\n" + out.read_text())
    print(f"lock: wrote {target.relative_to(workspace)} ({pin})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--uv", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--variant", action="append", help="relock only this variant (repeatable); default: all")
    parser.add_argument("--uv-only", action="store_true", help="re-pin uv_requirements.txt's hashes only")
    args = parser.parse_args(argv)
    workspace = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    if not (workspace / "WORKSPACE").exists():
        sys.exit(f"lock: run me with `{COMMAND}` (no WORKSPACE in {workspace})")
    uv = str(Path(args.uv).resolve())
    if args.uv_only:
        compile_uv(uv, workspace)
        return 0
    _, variants = load_variants(workspace)
    unknown = sorted(set(args.variant or []) - set(variants))
    if unknown:
        sys.exit(f"lock: unknown variant(s) {', '.join(unknown)}; known: {', '.join(sorted(variants))}")
    index = os.environ.get("MLENV_PYPI_INDEX_URL") or DEFAULT_INDEX
    for name in args.variant or sorted(variants):
        compile_variant(uv, workspace, name, variants[name], index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
