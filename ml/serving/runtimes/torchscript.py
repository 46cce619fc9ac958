"""The TorchScript runtime: TorchScript archives (torch.jit.load) and torch.export programs, on cpu or cuda.

Nothing is unpickled: both archive formats hold tensors and code, not Python objects. One module object is
shared by every instance of a version: TorchScript runs its graph without the GIL, so N instances use up to
N x threads cores; a torch.export module steps through its graph in Python, so its instances overlap less.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ml.serving.runtimes import Device

__all__ = ["TorchModel", "check_device", "load"]


def check_device(device: Device) -> torch.device:
    """The torch device for `device`, checked now: a server must not start on a device it cannot use."""
    if device.type != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none: a CPU-only build"
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA device (CUDA in this build: "
                         f"{built}); use --device cpu, or run on a GPU machine with the CUDA environment "
                         f"(tools/bazel run --config=cuda ...)")
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", device.index)


class TorchModel:
    platform = "pytorch_libtorch"

    def __init__(self, module, device: Device, fmt: str = "torchscript") -> None:
        self.module, self.device = module, device
        self.metadata_platform = "pytorch_" + fmt
        self._torch_device = torch.device(str(device))
        self._on_cpu = device.type == "cpu"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            tensors = [torch.from_numpy(a) for a in inputs]
            if not self._on_cpu:
                tensors = [t.to(self._torch_device) for t in tensors]
            out = self.module(*tensors)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [t.detach().cpu().numpy() for t in out]

    def instance(self):
        """On cuda each instance queues its batches on its own stream, so one instance's copies and kernels
        overlap another's; .cpu() on the outputs waits for this stream only."""
        if self._on_cpu:
            return contextlib.nullcontext()
        return torch.cuda.stream(torch.cuda.Stream(self._torch_device))


def load(data: bytes, fmt: str, device: Device, threads: int | None, signature: dict | None = None) -> TorchModel:
    target = check_device(device)
    if threads is not None:
        torch.set_num_threads(threads)  # process-wide in torch: every instance's ops run on teams of this size
    if fmt == "torchscript":
        module = torch.jit.load(io.BytesIO(data), map_location=target)
        module.eval()
    elif fmt == "torch_export":
        module = torch.export.load(io.BytesIO(data)).module().to(target)
    else:
        raise KeyError(fmt)
    return TorchModel(module, device, fmt)
