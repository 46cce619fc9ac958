"""Atomic checkpoints that let `--resume` reach exactly the state of an uninterrupted run.

A checkpoint holds the model and optimizer (and grad scaler) state, every RNG the step consumes (python,
numpy's global, torch CPU and CUDA), the data position (epoch, batch within the epoch, global step), and the
digest of the config that made it. Files are written to a temporary name in the same folder, fsynced, and
renamed (atomic on POSIX), then `latest` is swapped the same way: a run killed at any instant leaves either
the previous or the new checkpoint, never a torn one. Loading uses `weights_only=True`: no arbitrary
unpickling.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.engine.errors import CheckpointError

__all__ = ["DataPosition", "capture_rng", "config_digest", "latest_checkpoint", "load_checkpoint", "restore_rng",
           "save_checkpoint"]

_LATEST = "latest"


@dataclass(frozen=True)
class DataPosition:
    epoch: int
    batch_in_epoch: int  # batches of this epoch already consumed
    global_step: int


def config_digest(config: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    kept = {k: v for k, v in config.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensors(state: dict[str, Any]) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _fsync_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(folder: Path, *, position: DataPosition, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Any, config_hash: str, extra: dict[str, Any] | None = None, keep: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{position.global_step:08d}.pt"
    state = {
        "format": 1,
        "position": {"epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
                     "global_step": position.global_step},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng(),
        "config_hash": config_hash,
        "extra": extra or {},
    }
    _fsync_write(path, lambda fh: torch.save(state, fh))
    _fsync_write(folder / _LATEST, lambda fh: fh.write(path.name.encode() + b"\n"))
    for old in sorted(folder.glob("ckpt-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    pointer = folder / _LATEST
    if not pointer.exists():
        return None
    path = folder / pointer.read_text().strip()
    if not path.exists():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist; delete {pointer} to start over")
    return path


def load_checkpoint(path: Path, *, config_hash: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if state.get("config_hash") != config_hash:
        raise CheckpointError(
            f"checkpoint {path} was written by a different config (digest {state.get('config_hash')}, this run "
            f"{config_hash}); resume with the same flags, or use a new --run-dir to start fresh")
    return state
