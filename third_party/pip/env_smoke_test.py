"""The whole stack imports in ONE process, from the locked tree, at the locked versions."""

import json
import sys
from importlib import metadata
from pathlib import Path

# @pypi in the runfiles: `pypi` under WORKSPACE, `_main~mlenv~pypi` (or `+`) under Bzlmod.
PYPI = next(p for p in (Path("../pypi"), *Path("..").glob("*~pypi"), *Path("..").glob("*+pypi")) if p.is_dir())
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
