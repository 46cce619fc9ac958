"""Tiny, valid Debian packages for tests (an `ar` archive of debian-binary, control.tar.xz, data.tar.*).

    make_deb(tmp / "hello.deb", "hello", "1.0-1", {"bin/hello": b"#!/bin/sh\\n", "bin/hi": Link("hello")})
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Link:
    """A symlink (hard=False) or hard link (hard=True) to `target`."""

    target: str
    hard: bool = False


def _tar(entries: dict[str, bytes | Link], compression: str) -> bytes:
    buf = io.BytesIO()
    mode = {"xz": "w:xz", "gz": "w:gz", "": "w"}.get(compression, "w")
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in entries} - {"."})
        for d in sorted({str(parent) for p in dirs for parent in [Path(p), *Path(p).parents]} - {"."}):
            info = tarfile.TarInfo(f"./{d}/")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, content in entries.items():
            info = tarfile.TarInfo(f"./{path}")
            info.mtime = 1700000000
            if isinstance(content, Link):
                info.type = tarfile.LNKTYPE if content.hard else tarfile.SYMTYPE
                info.linkname = f"./{content.target}" if content.hard else content.target
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755 if path.split("/")[-2:-1] == ["bin"] else 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        out.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def make_deb(path: Path, name: str, version: str, files: dict[str, bytes | Link], arch: str = "amd64",
             data_compression: str = "xz") -> Path:
    control = f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: mlenv tests\n" \
              f"Description: test package {name}\n"
    data_name = "data.tar" + (f".{data_compression}" if data_compression else "")
    payload = _tar(files, data_compression) if data_compression in ("xz", "gz", "") else b"\x28\xb5\x2f\xfd"
    path.write_bytes(_ar([
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", _tar({"control": control.encode()}, "xz")),
        (data_name, payload),
    ]))
    return path
