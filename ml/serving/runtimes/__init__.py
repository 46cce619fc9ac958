"""The server's runtime seam: one module per runtime, chosen by a bundle artifact's format.

Every runtime module (torchscript.py, ...) has `load(data, fmt, device, threads) -> model`; the model it
returns is what the batcher and the golden check call, whatever runs inside:

    model.run(inputs)     a list of numpy arrays in signature order -> a list of numpy arrays
    model.instance()      a context manager each model thread holds while it serves (a CUDA stream, ...)
    model.device          the Device it runs on
    model.platform        its platform in Triton's ModelConfig (pytorch_libtorch, onnxruntime_onnx, ...)
    model.metadata_platform  and in ModelMetadata
    model.module          the runtime's own object (a torch module, ...), for tests and diagnostics

A runtime module is imported only when a bundle of its format loads, so a server that serves one runtime
never imports another's framework (torch, onnxruntime, tensorflow). A runtime whose framework cannot be
imported refuses the bundle with a LoadError saying so; the server keeps serving the others.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = ["RUNTIMES", "Device", "LoadError", "PythonModel", "load", "parse_device"]

# artifact_format -> the module under ml.serving.runtimes that serves it
RUNTIMES = {"torchscript": "torchscript", "torch_export": "torchscript", "onnx": "onnx",
            "tf_saved_model": "savedmodel"}


class LoadError(Exception):
    """A runtime cannot serve this artifact (its framework cannot be imported here, the artifact disagrees with
    bundle.json, ...): the message says why and what to do; bundle.load_model names the bundle."""


class Device(NamedTuple):
    """Where a model runs: type "cpu" or "cuda", and the CUDA index (None on cpu)."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def parse_device(spec: Any) -> Device:
    """The Device `spec` ("cpu", "cuda", "cuda:N", or a Device) names; ValueError saying what to give instead.
    Whether the device exists is checked by the runtime that loads onto it."""
    if isinstance(spec, Device):
        return spec
    kind, _, index = str(spec).partition(":")
    if kind == "cpu" and not index:
        return Device("cpu")
    if kind == "cuda" and (not index or index.isdigit()):
        return Device("cuda", int(index) if index else 0)
    raise ValueError(f"--device {str(spec)!r} is not a device the server knows; use cpu, cuda or cuda:N")


def load(data: bytes | dict[str, bytes], fmt: str, device: Any = "cpu", threads: int | None = None, *,
         signature: dict | None = None):
    """Loads an artifact of format `fmt` with the runtime that serves it: its bytes, or {path: bytes} for a
    folder artifact (a SavedModel). `threads`: intra-op threads per instance (None: the runtime's default).
    `signature`: bundle.json's inputs/outputs, which a runtime that addresses tensors by name (SavedModel)
    checks the artifact against and maps run()'s positional arrays with. KeyError if no runtime serves `fmt`
    (the caller names the bundle)."""
    module = importlib.import_module(f"{__name__}.{RUNTIMES[fmt]}")
    return module.load(data, fmt, parse_device(device), threads, signature=signature)


class PythonModel:
    """A plain Python function of numpy arrays as a runtime model: for tests and benchmarks of the batcher.
    `fn` takes the inputs positionally and returns one array or a tuple/list of them."""

    platform = metadata_platform = "python"

    def __init__(self, fn: Callable, device: Any = "cpu") -> None:
        self.module, self.device = fn, parse_device(device)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        out = self.module(*inputs)
        return [np.asarray(a) for a in (out if isinstance(out, (tuple, list)) else (out,))]

    def instance(self):
        return contextlib.nullcontext()
