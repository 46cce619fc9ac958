"""Checkpoint folders that any framework's adapter writes into, committed atomically. Imports no torch/TF.

A checkpoint is a folder `<run_dir>/checkpoints/ckpt-<step:08d>/` holding whatever the framework adapter
wrote (a torch state file, a sharded torch.distributed.checkpoint, a TensorFlow checkpoint) plus
`meta.json`: the step, the adapter's metadata (data position, strategy, world size, ...), and the config
digest and config that made it.

    with store.writer(step, meta) as staging:     # every rank may write its shard into `staging`
        adapter_saves_into(staging)
    # on exit: files fsynced, staging renamed to ckpt-<step>, `latest` swapped, old checkpoints pruned

A run killed at any instant leaves either the previous or the new checkpoint, never a torn one: the folder
only gets its final name once complete (rename is atomic on POSIX), and `latest` is replaced the same way.
Staging folders left by a crash are ignored and removed by the next writer. On restore, a checkpoint made
under another config (or strategy, or world size) is refused, naming the keys that differ and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.engine.errors import CheckpointError

__all__ = ["Checkpoint", "CheckpointStore", "config_digest", "fsync_tree"]

_LATEST = "latest"
_META = "meta.json"
_PREFIX = "ckpt-"
_STAGING = ".staging-"


def config_digest(config: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    kept = {k: v for k, v in config.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    meta: dict[str, Any] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsyncs every file and folder under `folder` (and the folder itself)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class CheckpointStore:
    """The checkpoint folders of one run. Only the primary rank renames, swaps and prunes.

    `barrier` is called where every rank must have finished a phase (the adapter passes its process
    group's barrier; a single process needs none).
    """

    def __init__(self, folder: Path, *, keep: int, is_primary: bool = True, digest: str = "",
                 config: dict[str, Any] | None = None, barrier: Callable[[], None] = lambda: None) -> None:
        if keep < 1:
            raise CheckpointError(f"keep must be >= 1 checkpoints, got {keep}")
        self.folder, self.keep, self.is_primary = Path(folder), keep, is_primary
        self.digest, self.config = digest, dict(config or {})
        self.barrier = barrier

    def name(self, step: int) -> str:
        return f"{_PREFIX}{step:08d}"

    @contextlib.contextmanager
    def writer(self, step: int, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yields the staging folder of checkpoint `step` (the same path on every rank)."""
        if step < 0:
            raise CheckpointError(f"checkpoint step must be >= 0, got {step}")
        staging = self.folder / f"{_STAGING}{self.name(step)}"
        final = self.folder / self.name(step)
        if self.is_primary:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob(_STAGING + "*"):
                shutil.rmtree(old, ignore_errors=True)
            staging.mkdir()
        self.barrier()
        ok = False
        try:
            yield staging
            ok = True
        finally:
            self.barrier()
            if not ok and self.is_primary:
                shutil.rmtree(staging, ignore_errors=True)
        if self.is_primary:
            record = {"format": 2, "step": int(step), "config_digest": self.digest, "config": self.config,
                      "meta": meta or {}}
            (staging / _META).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            fsync_tree(staging)
            if final.exists():  # the same step written again (e.g. a resumed run's final checkpoint)
                shutil.rmtree(final)
            os.rename(staging, final)
            _fsync_dir(self.folder)
            _atomic_write_text(self.folder / _LATEST, final.name + "\n")
            for old in sorted(p for p in self.folder.glob(_PREFIX + "*") if p.is_dir())[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def latest(self, *, check_config: bool = True) -> Checkpoint | None:
        """The newest complete checkpoint, or None; refuses one written under a different config."""
        pointer = self.folder / _LATEST
        if not pointer.exists():
            return None
        path = self.folder / pointer.read_text().strip()
        if not (path / _META).is_file():
            raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete; delete {pointer} "
                                  f"(and {path}) to start over, or point it at an older {_PREFIX}* folder")
        ckpt = self.read(path)
        if check_config and self.digest:
            self.check(ckpt)
        return ckpt

    @staticmethod
    def read(path: Path) -> Checkpoint:
        try:
            record = json.loads((Path(path) / _META).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        return Checkpoint(Path(path), int(record["step"]), {**record.get("meta", {}),
                                                             "config_digest": record.get("config_digest"),
                                                             "config": record.get("config", {})})

    def check(self, ckpt: Checkpoint) -> None:
        theirs = ckpt.meta.get("config_digest")
        if theirs == self.digest:
            return
        old = ckpt.meta.get("config", {})
        changed = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in changed[:8])
        raise CheckpointError(
            f"checkpoint {ckpt.path} was written by a different config (digest {theirs}, this run {self.digest}"
            + (f"; changed: {detail}" if detail else "") + "); resume with the same flags"
            " (strategy and nproc included), or use a new --run-dir to start fresh")
