"""Exports a trained model for serving: the artifact, its signature, and a golden example batch.

Layout of an export folder (what the bundle rule consumes):

    model.pt | model.pt2     TorchScript archive | torch.export program (torch.export.save)
    signature.json           {"format", "inputs": [{"name", "dtype", "shape"}], "outputs": [...]}; -1 = dynamic batch
    golden.npz               inputs (input names) and expected outputs (output names), numpy arrays

The artifact is loaded back from disk and checked against the eager model on the golden batch AND on a
batch of another size (the batch dimension must stay dynamic) before export returns; a mismatch raises
ExportError. Neither format unpickles arbitrary Python when loaded; golden.npz is loaded with
allow_pickle=False.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.engine.errors import ExportError

__all__ = ["ExportResult", "export_model", "load_exported", "load_golden"]

ARTIFACTS = {"torchscript": "model.pt", "torch_export": "model.pt2"}


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


def load_golden(folder: Path, signature: dict | None = None) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    signature = signature or json.loads((folder / "signature.json").read_text())
    with np.load(folder / "golden.npz", allow_pickle=False) as data:
        inputs = tuple(torch.from_numpy(data["input." + s["name"]]) for s in signature["inputs"])
        outputs = tuple(torch.from_numpy(data["output." + s["name"]]) for s in signature["outputs"])
    return inputs, outputs


def export_model(model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], *, input_names: list[str],
                 output_names: list[str], folder: Path, fmt: str = "torchscript", atol: float = 1e-5) -> ExportResult:
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
        else:
            dim = torch.export.Dim("batch", min=1, max=1 << 20)
            shapes = tuple({0: dim} for _ in example_inputs)
            program = torch.export.export(model, example_inputs, dynamic_shapes=shapes)
            torch.export.save(program, str(artifact))
    except Exception as exc:  # noqa: BLE001 - tracing/export raise many types
        raise ExportError(f"{fmt} export of {type(model).__name__} failed: {exc}") from exc

    signature = {
        "format": fmt,
        "inputs": [_spec(n, t) for n, t in zip(input_names, example_inputs)],
        "outputs": [_spec(n, t) for n, t in zip(output_names, expected)],
    }
    (folder / "signature.json").write_text(json.dumps(signature, indent=2) + "\n")
    np.savez(folder / "golden.npz",
             **{"input." + n: t.numpy() for n, t in zip(input_names, example_inputs)},
             **{"output." + n: t.numpy() for n, t in zip(output_names, expected)})

    # Load what we wrote, as a server would, and compare on the golden batch and on a smaller one.
    loaded = load_exported(folder)
    worst = 0.0
    half = batch // 2
    for inputs, want in ((example_inputs, expected),
                         (tuple(t[:half] for t in example_inputs), tuple(t[:half] for t in expected))):
        with torch.no_grad():
            got = _as_tuple(loaded(*inputs))
        for name, g, w in zip(output_names, got, want):
            if g.shape != w.shape:
                raise ExportError(f"exported output {name} has shape {tuple(g.shape)}, eager {tuple(w.shape)} "
                                  f"(batch {inputs[0].shape[0]}): the batch dimension is not dynamic")
            diff = float((g.float() - w.float()).abs().max()) if g.numel() else 0.0
            worst = max(worst, diff)
            if diff > atol:
                raise ExportError(f"exported output {name} differs from eager by {diff:.3g} (> {atol}) on a batch of "
                                  f"{inputs[0].shape[0]}")
    return ExportResult(folder, artifact, signature, worst)
