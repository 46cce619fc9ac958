"""`--precision fp32|bf16|fp16`: autocast and loss scaling in one place.

bf16 autocasts matmuls on CPU and GPU (no scaler needed: bf16 has fp32's exponent range). fp16 autocasts on
CUDA with a GradScaler (fp16 gradients underflow without it) and is refused on CPU, where PyTorch has no fast
fp16 kernels and no scaler.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from ml.engine.errors import PrecisionError

__all__ = ["Precision"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    mode: str
    device: torch.device
    scaler: Any = None

    @classmethod
    def create(cls, mode: str, device: torch.device) -> Precision:
        if mode not in ("fp32", "bf16", "fp16"):
            raise PrecisionError(f"precision {mode!r} is not one of fp32, bf16, fp16")
        if mode == "fp16" and device.type != "cuda":
            raise PrecisionError(
                "--precision fp16 needs a CUDA device (fp16 training relies on CUDA autocast and a grad scaler); "
                "on CPU use --precision bf16 (autocast) or fp32")
        if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise PrecisionError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                                 "use --precision fp16 or fp32")
        scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
        return cls(mode, device, scaler)

    def autocast(self):
        if self.mode == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.mode])

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, parameters,
                          grad_clip: float | None) -> torch.Tensor | None:
        """Backward, optional clipping (on unscaled gradients), optimizer step. Returns the grad norm (a
        tensor: converting it to a float every step would force a device sync)."""
        norm = None
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if grad_clip is not None:
                self.scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm
