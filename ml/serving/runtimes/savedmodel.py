"""The SavedModel runtime: TensorFlow SavedModels (a bundle's `model/saved_model/` folder), on cpu or a GPU.

Imported only when a bundle of format tf_saved_model loads (ml/serving/runtimes), so a server that serves
only TorchScript never loads TensorFlow; a server whose environment has no TensorFlow refuses such a bundle
with an error saying so and keeps serving the others.

What is loaded is the verified bytes (bundle.verify), never the bundle folder again: they are written to a
private temporary folder (mode 0700) that lives as long as the model, since a SavedModel may name assets by
path. Loading a SavedModel runs no Python from the bundle: it holds a graph and tensors.

The ``serving_default`` signature must agree with bundle.json on every input and output (name, dtype, shape;
-1 = any size): otherwise the bundle is refused naming each difference, before any request can reach it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ml.serving.runtimes import Device, LoadError

__all__ = ["SIGNATURE_KEY", "SavedModel", "import_tensorflow", "load", "signature_problems"]

SIGNATURE_KEY = "serving_default"


def import_tensorflow():
    """TensorFlow, or LoadError saying this server cannot serve SavedModels and what to do."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise LoadError(f"this bundle is a TensorFlow SavedModel, but this server cannot import TensorFlow ({exc}): "
                          "serve it from a server built on the locked environment (//ml/serving:serve, or the "
                          "project's :serve / :serve_image), which holds tensorflow") from None
    return tf


def signature_problems(fn, signature: Mapping) -> list[str]:
    """Every way the concrete function `fn` and bundle.json's `signature` disagree (empty: they agree)."""
    have = {"input": dict(fn.structured_input_signature[1]), "output": dict(fn.structured_outputs)}
    problems = []
    for kind in ("input", "output"):
        declared = {s["name"]: s for s in signature[kind + "s"]}
        if sorted(declared) != sorted(have[kind]):
            problems.append(f"{kind}s are {sorted(have[kind])} in the SavedModel but {sorted(declared)} in bundle.json")
            continue
        for name, s in declared.items():
            spec = have[kind][name]
            shape = [-1 if d is None else d for d in spec.shape.as_list()] if spec.shape.rank is not None else None
            if spec.dtype.name != s["dtype"] or shape != list(s["shape"]):
                problems.append(f"{kind} {name!r} is {spec.dtype.name}{shape} in the SavedModel but "
                                f"{s['dtype']}{list(s['shape'])} in bundle.json")
    return problems


class SavedModel:
    """A loaded SavedModel as a runtime model: run() takes and returns arrays in bundle.json's order.

    One concrete function is shared by every instance of a version: TensorFlow runs it without the GIL and
    calling it from several threads is safe (inference reads the variables, never writes them)."""

    platform = "tensorflow_savedmodel"
    metadata_platform = "tensorflow_savedmodel"

    def __init__(self, loaded, fn, signature: Mapping, device: Device, tf_device: str, folder: Path) -> None:
        self.module, self.device = loaded, device
        self._fn, self._tf_device = fn, tf_device
        self._inputs = [s["name"] for s in signature["inputs"]]
        self._outputs = [s["name"] for s in signature["outputs"]]
        # the private copy goes when the model does (assets may be read lazily, by path)
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import tensorflow as tf

        with tf.device(self._tf_device):
            out = self._fn(**{name: tf.constant(a) for name, a in zip(self._inputs, inputs, strict=True)})
        return [out[name].numpy() for name in self._outputs]

    def instance(self):
        return contextlib.nullcontext()


def _tf_device(tf, device: Device) -> str:
    if device.type != "cuda":
        return "/CPU:0"
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        raise ValueError(f"--device {device}: TensorFlow {tf.__version__} sees no GPU (this environment's build: "
                         f"{'CUDA' if tf.test.is_built_with_cuda() else 'CPU-only, tensorflow-cpu'}); serve this "
                         f"bundle with --device cpu, or from an environment whose TensorFlow has CUDA")
    if device.index >= len(gpus):
        raise ValueError(f"--device {device}: TensorFlow sees {len(gpus)} GPU(s), cuda:0..cuda:{len(gpus) - 1}")
    return f"/GPU:{device.index}"


def load(data: Mapping[str, bytes], fmt: str, device: Device, threads: int | None,
         signature: Mapping | None = None) -> SavedModel:
    """Loads a SavedModel from its verified files ({path inside the folder: bytes}) and checks its
    serving_default signature against bundle.json's `signature`."""
    if fmt != "tf_saved_model":
        raise KeyError(fmt)
    if not isinstance(data, Mapping):
        raise LoadError("a tf_saved_model artifact is a folder, but the bundle names a single file: rebuild the bundle")
    if signature is None:
        raise LoadError("a SavedModel is loaded with bundle.json's signature (its inputs are addressed by name)")
    tf = import_tensorflow()
    tf_device = _tf_device(tf, device)
    if threads is not None:
        with contextlib.suppress(RuntimeError):  # only possible before TensorFlow's runtime started
            tf.config.threading.set_intra_op_parallelism_threads(threads)
    folder = Path(tempfile.mkdtemp(prefix="mlenv-savedmodel-"))  # mode 0700: only this user reads the copy
    try:
        for rel, blob in data.items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
        with tf.device(tf_device):
            try:
                loaded = tf.saved_model.load(str(folder))
            except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types for a bad SavedModel
                raise LoadError(f"the SavedModel does not load: {type(exc).__name__}: {exc}") from None
        if SIGNATURE_KEY not in loaded.signatures:
            raise LoadError(f"the SavedModel has no {SIGNATURE_KEY!r} signature (it has {sorted(loaded.signatures)}): "
                              "export it with ml.engine.tf.export.export_saved_model")
        fn = loaded.signatures[SIGNATURE_KEY]
        problems = signature_problems(fn, signature)
        if problems:
            raise LoadError("the SavedModel's serving_default signature and bundle.json disagree: " + "; ".join(problems)
                              + ". Both must come from one export: rebuild the bundle from the trainer's export folder")
        return SavedModel(loaded, fn, signature, device, tf_device, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
