"""The whole stack imports in ONE process, from the locked tree, at the locked versions."""

import json
import sys
from importlib import metadata
from pathlib import Path

from tools.testing.bazel_workspace import runfiles_repo

# @pypi in the runfiles: `pypi` under WORKSPACE, `_main~mlenv~pypi` (or `+`) under Bzlmod.
PYPI = runfiles_repo("pypi")
MANIFEST = json.loads((PYPI / "manifest.json").read_text())


def test_imports_and_works_together():
    import grpc
    import mlflow
    import tensorflow as tf
    import torch
    import tritonclient.grpc as triton_grpc
    from tritonclient.grpc import service_pb2

    assert torch.ones(2, 3).matmul(torch.ones(3, 1)).sum().item() == 6.0
    assert float(tf.reduce_sum(tf.matmul(tf.ones((2, 3)), tf.ones((3, 1))))) == 6.0
    assert "GRPCInferenceService" in service_pb2.DESCRIPTOR.services_by_name
    assert callable(triton_grpc.InferenceServerClient)
    assert grpc.insecure_channel and mlflow.MlflowClient


def test_versions_are_the_locked_ones():
    for dist in ("torch", "tensorflow-cpu", "mlflow", "grpcio", "tritonclient", "protobuf", "numpy", "pytest"):
        locked = MANIFEST["distributions"][dist.replace("-", "_")]["version"]
        assert metadata.version(dist) == locked, f"{dist}: imported {metadata.version(dist)}, locked {locked}"


def test_torch_build_matches_variant():
    import torch

    if MANIFEST["variant"] == "cpu":
        assert torch.version.cuda is None, f"CPU variant got a CUDA torch ({torch.version.cuda})"
    else:
        assert torch.version.cuda, "CUDA variant got a CPU-only torch"


def test_nothing_comes_from_the_host_site_packages():
    import numpy
    import torch

    assert sys.flags.no_site, "the interpreter must run with -S (toolchains/python)"
    assert not [p for p in sys.path if p.endswith("site-packages") and not p.endswith("pypi/site-packages")], sys.path
    for module in (torch, numpy):
        assert "pypi/site-packages/" in module.__file__, module.__file__


def test_byte_code_is_path_free_yet_source_lookup_finds_the_real_files():
    """install_env.py compiles the tree's .pyc with a relative file name (no output-base path, so checkouts at
    different paths share cache entries); importing them, Python points every code object at the real source,
    so tracebacks, inspect and TorchScript (which scripts torch.nn modules from their source) keep working."""
    import importlib.util
    import inspect
    import traceback

    import torch
    from torch.nn.modules import linear

    cached = Path(importlib.util.cache_from_source(linear.__file__))
    compiled = cached.read_bytes()
    assert b"site-packages/torch/nn/modules/linear.py" in compiled
    assert str(Path(linear.__file__).resolve().parent).encode() not in compiled
    assert b"/external/pypi/" not in compiled
    assert linear.Linear.forward.__code__.co_filename == linear.__file__
    assert Path(linear.__file__).is_file()
    assert "return F.linear(input, self.weight, self.bias)" in inspect.getsource(linear.Linear.forward)
    scripted = torch.jit.script(torch.nn.Linear(3, 2))
    assert scripted(torch.ones(1, 3)).shape == (1, 2)
    try:
        torch.nn.Linear(3, 2)(torch.ones(1, 4))
    except RuntimeError as exc:
        frames = traceback.extract_tb(exc.__traceback__)
    [frame] = [f for f in frames if f.name == "forward" and f.filename.endswith("torch/nn/modules/linear.py")]
    assert frame.filename == linear.__file__ and "F.linear" in frame.line, frame
