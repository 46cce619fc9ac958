"""Exports a trained model for serving: the artifact, its signature, and a golden example batch.

Layout of an export folder (what the bundle rule consumes):

    model.pt | model.pt2     TorchScript archive | torch.export program (torch.export.save)
    model.onnx               the same model as ONNX (opset ONNX_OPSET, dynamic batch), for ONNX Runtime
    signature.json           {"format", "artifacts": {format: file}, "export_errors": {format: why},
                              "inputs": [{"name", "dtype", "shape"}], "outputs": [...]}; -1 = dynamic batch
    golden.npz               inputs (input names) and expected outputs (output names), numpy arrays

Each artifact is loaded back from disk and checked against the eager model on the golden batch AND on a
batch of another size (the batch dimension must stay dynamic) before export returns. A mismatch of the main
artifact (`format`) raises ExportError. The ONNX copy is a second, optional artifact: a model the ONNX
exporter cannot take (an unsupported op) or whose ONNX outputs differ is still exported, with the
exporter's reason in signature.json's export_errors, and a bundle that asks for ONNX fails its build with
that reason (ml/serving/bundle.py), never a server. No format unpickles arbitrary Python when loaded;
golden.npz is loaded with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.engine.errors import ExportError

__all__ = ["ONNX_OPSET", "ExportResult", "export_model", "export_onnx", "load_exported", "load_golden"]

ARTIFACTS = {"torchscript": "model.pt", "torch_export": "model.pt2"}
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18  # pinned: the exporter's default may move with torch; ONNX Runtime 1.32 runs opsets up to 23


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    artifact: Path
    signature: dict
    max_abs_diff: float


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _spec(name: str, tensor: torch.Tensor) -> dict:
    return {"name": name, "dtype": _dtype_name(tensor.dtype), "shape": [-1, *tensor.shape[1:]]}


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def load_exported(folder: Path):
    """Loads an export folder's artifact as a callable taking the inputs positionally (in signature order)."""
    signature = json.loads((folder / "signature.json").read_text())
    artifact = folder / ARTIFACTS[signature["format"]]
    if signature["format"] == "torchscript":
        module = torch.jit.load(str(artifact), map_location="cpu")
        module.eval()
        return module
    program = torch.export.load(str(artifact))
    return program.module()


def _run_onnx(path: Path):
    """A callable like load_exported's for an ONNX file, run by ONNX Runtime on the CPU."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before ONNX Runtime loads: no usage telemetry
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
        return tuple(torch.from_numpy(a) for a in out)

    return run


def _strip_onnx_metadata(proto) -> None:
    """Drops what the dynamo exporter records per node for debugging (the Python stack trace with absolute
    source paths, FX node text, scopes): the file becomes a function of the model alone, like the
    canonical TorchScript archive, and the same weights give the same bytes in any checkout or sandbox."""
    import onnx

    def graph(g) -> None:
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graph(attr.g)
                for sub in attr.graphs:
                    graph(sub)
        for value in (*g.input, *g.output, *g.value_info):
            del value.metadata_props[:]
            value.doc_string = ""
        del g.metadata_props[:]
        g.doc_string = ""

    graph(proto.graph)
    for function in proto.functions:
        for node in function.node:
            del node.metadata_props[:]
            node.doc_string = ""
        del function.metadata_props[:]
    del proto.metadata_props[:]
    proto.doc_string = ""


def export_onnx(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *, input_names: list[str],
                output_names: list[str], path: Path) -> None:
    """Writes `model` as ONNX with torch.onnx.export(dynamo=True): opset ONNX_OPSET, the batch dimension of
    every input and output dynamic, weights inside the one file. Raises what the exporter raises."""
    import warnings

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # the exporter's helpers may load ONNX Runtime

    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's chatter (axis renames, deprecations) is not the user's
        program = torch.onnx.export(model, example_inputs, dynamo=True, input_names=input_names,
                                    output_names=output_names, opset_version=ONNX_OPSET, external_data=False,
                                    dynamic_shapes=tuple({0: batch} for _ in example_inputs), verbose=False,
                                    report=False)
    proto = program.model_proto
    _strip_onnx_metadata(proto)
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString(deterministic=True))


def _exporter_reason(exc: BaseException) -> str:
    """The ONNX exporter's error in one line: its first sentence and its exception summary (the op or guard
    it could not take), without the terminal colours and the generic next steps."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    first = text.strip().split(". ")[0].strip()
    _, _, summary = text.partition("## Exception summary")
    reason = f"{first}. {summary}" if summary else text
    reason = " ".join(reason.split()).replace("(Refer to the full stack trace above for more information.)", "")
    return f"{type(exc).__name__}: {reason.strip()[:1500]}"


def _compare(loaded, example_inputs, expected, output_names, atol: float, what: str) -> float:
    """Worst |exported - eager| on the example batch and on its first half; ExportError past `atol`."""
    worst = 0.0
    half = example_inputs[0].shape[0] // 2
    for inputs, want in ((example_inputs, expected),
                         (tuple(t[:half] for t in example_inputs), tuple(t[:half] for t in expected))):
        with torch.no_grad():
            got = _as_tuple(loaded(*inputs))
        for name, g, w in zip(output_names, got, want, strict=True):
            if g.shape != w.shape:
                raise ExportError(f"{what} output {name} has shape {tuple(g.shape)}, eager {tuple(w.shape)} "
                                  f"(batch {inputs[0].shape[0]}): the batch dimension is not dynamic")
            diff = float((g.float() - w.float()).abs().max()) if g.numel() else 0.0
            worst = max(worst, diff)
            if diff > atol:
                raise ExportError(f"{what} output {name} differs from eager by {diff:.3g} (> {atol}) on a batch "
                                  f"of {inputs[0].shape[0]}")
    return worst


def load_golden(folder: Path, signature: dict | None = None) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    signature = signature or json.loads((folder / "signature.json").read_text())
    with np.load(folder / "golden.npz", allow_pickle=False) as data:
        inputs = tuple(torch.from_numpy(data["input." + s["name"]]) for s in signature["inputs"])
        outputs = tuple(torch.from_numpy(data["output." + s["name"]]) for s in signature["outputs"])
    return inputs, outputs


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without the wall-clock timestamps zipfile would stamp on each member: same arrays, same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


def canonicalize_torchscript(path: Path) -> None:
    """Makes a TorchScript archive a function of the model alone, so the same weights give the same bytes.

    torch.jit.save writes a random `.data/serialization_id` per process and `*.debug_pkl` source maps that
    embed the absolute path of the model's source file (a Bazel sandbox path differs on every build). The
    id is replaced by a digest of the other members; the source maps are dropped (torch.jit.load does not
    need them: errors inside the model then point at the TorchScript code instead of the Python source).
    """
    with zipfile.ZipFile(path) as zf:
        members = [(info.filename, zf.read(info)) for info in zf.infolist()]
    kept = [(name, data) for name, data in members if not name.endswith(".debug_pkl")]
    digest = hashlib.sha256()
    for name, data in kept:
        if not name.endswith("/.data/serialization_id"):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
        for name, data in kept:
            if name.endswith("/.data/serialization_id"):
                data = str(int.from_bytes(digest.digest()[:8], "big")).encode()
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            out.writestr(info, data)
    os.replace(tmp, path)


def export_model(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *, input_names: list[str],
                 output_names: list[str], folder: Path, fmt: str = "torchscript", atol: float = 1e-5,
                 onnx: bool = True) -> ExportResult:
    """Exports `model` as `fmt` (and, with `onnx`, as ONNX too: see the module docstring) into `folder`."""
    if fmt not in ARTIFACTS:
        raise ExportError(f"export format {fmt!r} is not one of {', '.join(ARTIFACTS)}")
    if len(input_names) != len(example_inputs):
        raise ExportError(f"{len(input_names)} input names for {len(example_inputs)} example inputs")
    batch = example_inputs[0].shape[0]
    if batch < 2:
        raise ExportError("the example batch needs >= 2 rows to check that the batch dimension stays dynamic")
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example_inputs = tuple(t.cpu() for t in example_inputs)
    with torch.no_grad():
        expected = _as_tuple(model(*example_inputs))
    if len(expected) != len(output_names):
        raise ExportError(f"model returned {len(expected)} outputs but {len(output_names)} output names were given")

    artifact = folder / ARTIFACTS[fmt]
    try:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(model, example_inputs, check_trace=False)
            traced.save(str(artifact))
            canonicalize_torchscript(artifact)
        else:
            dim = torch.export.Dim("batch", min=1, max=1 << 20)
            shapes = tuple({0: dim} for _ in example_inputs)
            program = torch.export.export(model, example_inputs, dynamic_shapes=shapes)
            torch.export.save(program, str(artifact))
    except Exception as exc:  # noqa: BLE001 - tracing/export raise many types
        raise ExportError(f"{fmt} export of {type(model).__name__} failed: {exc}") from exc

    artifacts, errors = {fmt: artifact.name}, {}
    (folder / ONNX_FILE).unlink(missing_ok=True)
    if onnx:
        try:
            export_onnx(model, example_inputs, input_names=input_names, output_names=output_names,
                        path=folder / ONNX_FILE)
            _compare(_run_onnx(folder / ONNX_FILE), example_inputs, expected, output_names, atol, "ONNX")
            artifacts["onnx"] = ONNX_FILE
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the bundle build reports it
            (folder / ONNX_FILE).unlink(missing_ok=True)
            errors["onnx"] = _exporter_reason(exc)
    signature = {
        "format": fmt,
        "artifacts": artifacts,
        **({"export_errors": errors} if errors else {}),
        "inputs": [_spec(n, t) for n, t in zip(input_names, example_inputs, strict=True)],
        "outputs": [_spec(n, t) for n, t in zip(output_names, expected, strict=True)],
    }
    (folder / "signature.json").write_text(json.dumps(signature, indent=2) + "\n")
    write_npz(folder / "golden.npz",
              {**{"input." + n: t.numpy() for n, t in zip(input_names, example_inputs, strict=True)},
               **{"output." + n: t.numpy() for n, t in zip(output_names, expected, strict=True)}})

    # Load what we wrote, as a server would, and compare on the golden batch and on a smaller one.
    worst = _compare(load_exported(folder), example_inputs, expected, output_names, atol, "exported")
    return ExportResult(folder, artifact, signature, worst)
