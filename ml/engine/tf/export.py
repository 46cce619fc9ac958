"""SavedModel export with the engine's export-folder layout: artifact, signature.json, golden.npz.

Layout (the same contract as ml/engine/export.py's TorchScript path, so bundles and bundle.check treat
both alike):

    saved_model/      a TensorFlow SavedModel whose ``serving_default`` signature takes the named inputs
                      (dynamic batch dimension) and returns a dict of the named outputs
    signature.json    {"format": "tf_saved_model", "inputs": [{"name", "dtype", "shape"}], "outputs": [...]}
    golden.npz        input.<name> and output.<name> arrays (loaded with allow_pickle=False)

Why a wrapper over ``model.export``: the server and the golden check need stable input AND output names
(Keras names outputs output_0...), float32 outputs whatever the training precision, and a proof that the
artifact reloaded from disk reproduces the in-memory function on the golden batch and on a batch of
another size before the export is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from ml.engine.errors import ExportError

__all__ = ["ARTIFACT", "ExportResult", "check_signature", "export_saved_model", "load_saved_model"]

ARTIFACT = "saved_model"
FORMAT = "tf_saved_model"
SIGNATURE_KEY = "serving_default"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    artifact: Path
    signature: dict
    max_abs_diff: float


def _spec(name: str, array: np.ndarray) -> dict:
    return {"name": name, "dtype": str(array.dtype), "shape": [-1, *array.shape[1:]]}


def load_saved_model(folder: str | Path):
    """The ``serving_default`` concrete function of an export folder, checked against signature.json."""
    folder = Path(folder)
    signature = json.loads((folder / "signature.json").read_text())
    loaded = tf.saved_model.load(str(folder / ARTIFACT))
    check_signature(loaded, signature, where=str(folder))
    return loaded, loaded.signatures[SIGNATURE_KEY]


def check_signature(loaded, signature: dict, *, where: str) -> None:
    """Raise ExportError naming every input/output on which the SavedModel and signature.json disagree."""
    if signature.get("format") != FORMAT:
        raise ExportError(f"{where}: signature.json format is {signature.get('format')!r}, expected {FORMAT!r}")
    if SIGNATURE_KEY not in loaded.signatures:
        raise ExportError(f"{where}: the SavedModel has no {SIGNATURE_KEY!r} signature (has {list(loaded.signatures)})")
    fn = loaded.signatures[SIGNATURE_KEY]
    have_in = {k: v for k, v in fn.structured_input_signature[1].items()}
    have_out = dict(fn.structured_outputs)
    problems = []
    for kind, have, declared in (("input", have_in, signature["inputs"]), ("output", have_out, signature["outputs"])):
        names = [s["name"] for s in declared]
        if sorted(names) != sorted(have):
            problems.append(f"{kind}s are {sorted(have)} in the SavedModel but {sorted(names)} in signature.json")
            continue
        for s in declared:
            spec = have[s["name"]]
            shape = [-1 if d is None else d for d in spec.shape.as_list()]
            if spec.dtype.name != s["dtype"] or shape != s["shape"]:
                problems.append(
                    f"{kind} {s['name']!r} is {spec.dtype.name}{shape} in the SavedModel but {s['dtype']}{s['shape']} "
                    "in signature.json"
                )
    if problems:
        raise ExportError(f"{where}: " + "; ".join(problems) + ". Re-export the model so both come from one export.")


def export_saved_model(fn: Callable[..., Mapping[str, tf.Tensor]], golden_inputs: Mapping[str, np.ndarray], *,
                       folder: str | Path, trackable=None, atol: float = 1e-5) -> ExportResult:
    """Export ``fn(**inputs) -> {output_name: tensor}`` as a SavedModel, with signature.json and golden.npz.

    ``trackable`` is the object owning the variables ``fn`` uses (usually the Keras model); it is attached
    to the saved module so the weights travel with the function.
    """
    folder = Path(folder)
    if not golden_inputs:
        raise ExportError("golden_inputs is empty: pass one named numpy array per model input")
    sizes = {len(v) for v in golden_inputs.values()}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ExportError(f"golden inputs need one common batch size >= 2 (to check a dynamic batch), got {sizes}")
    names = list(golden_inputs)
    specs = [tf.TensorSpec([None, *np.shape(golden_inputs[n])[1:]], tf.as_dtype(golden_inputs[n].dtype), name=n)
             for n in names]

    def serve(*args):
        out = fn(**dict(zip(names, args, strict=True)))
        if not isinstance(out, Mapping) or not out:
            raise ExportError("the exported function must return a non-empty dict {output_name: tensor}")
        return {k: tf.cast(v, tf.float32) if v.dtype in (tf.bfloat16, tf.float16) else v for k, v in out.items()}

    module = tf.Module()
    module.model = trackable
    module.serve = tf.function(serve, input_signature=specs)
    expected = {k: v.numpy() for k, v in module.serve(*[tf.constant(golden_inputs[n]) for n in names]).items()}
    artifact = folder / ARTIFACT
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tf.saved_model.save(module, str(artifact), signatures={SIGNATURE_KEY: module.serve.get_concrete_function()})
    except Exception as exc:  # noqa: BLE001 - SavedModel tracing raises many types
        raise ExportError(f"SavedModel export failed: {exc}") from exc
    signature = {
        "format": FORMAT,
        "inputs": [_spec(n, np.asarray(golden_inputs[n])) for n in names],
        "outputs": [_spec(k, v) for k, v in sorted(expected.items())],
    }
    (folder / "signature.json").write_text(json.dumps(signature, indent=2) + "\n")
    np.savez(folder / "golden.npz", **{"input." + n: np.asarray(golden_inputs[n]) for n in names},
             **{"output." + k: v for k, v in expected.items()})

    _, served = load_saved_model(folder)
    batch = next(iter(sizes))
    worst = 0.0
    for rows in (batch, batch // 2):
        got = served(**{n: tf.constant(golden_inputs[n][:rows]) for n in names})
        for k, want in expected.items():
            g = got[k].numpy()
            if g.shape != want[:rows].shape:
                raise ExportError(f"reloaded output {k} has shape {g.shape}, expected {want[:rows].shape} (batch {rows}): "
                                  "the batch dimension is not dynamic")
            diff = float(np.max(np.abs(g.astype(np.float64) - want[:rows]))) if g.size else 0.0
            worst = max(worst, diff)
            if diff > atol:
                raise ExportError(f"reloaded output {k} differs from the in-memory model by {diff:.3g} (> {atol}) on a "
                                  f"batch of {rows}")
    return ExportResult(folder, artifact, signature, worst)
