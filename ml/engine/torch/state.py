"""PyTorch state inside a checkpoint folder: RNG capture, and model/optimizer/scheduler state per strategy.

Two layouts, chosen by the strategy the run trained with (recorded in meta.json, checked on restore):

    ddp (and single process)   state.pt: model, optimizers, schedulers, scaler, every rank's RNG, extra
    fsdp                       model/ : a sharded torch.distributed.checkpoint (each rank writes its shards
                                        of the model and optimizer state: no rank ever holds the whole)
                               rng-<rank>.pt, train_state.pt (schedulers, scaler, extra; rank 0)

Files are loaded with `weights_only=True` (no arbitrary unpickling). `load_model_state` returns the full,
unsharded model state of either layout (for tests and tools that compare runs).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.engine.errors import CheckpointError

__all__ = ["capture_rng", "load_model_state", "restore_rng", "torch_load"]


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


def torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"cannot read checkpoint file {path}: {exc}; the checkpoint is damaged: resume from "
                              f"an older one (point `latest` at it) or start a new --run-dir") from exc


def load_model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a checkpoint folder, whichever strategy wrote it."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "state.pt").is_file():
        return torch_load(checkpoint / "state.pt")["model"]
    if (checkpoint / "model").is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "full.pt"
            dcp_to_torch_save(str(checkpoint / "model"), str(out))
            return torch_load(out)["model"]
    raise CheckpointError(f"{checkpoint} holds no PyTorch state (state.pt or model/); was it written by another "
                          f"framework's adapter?")
