"""Model bundles: the versioned, verifiable unit that leaves CI and that the model server loads.

A bundle is a folder:

    bundle.json          the manifest (below)
    model/model.pt       TorchScript archive (or model/model.pt2: a torch.export program)
    model/signature.json inputs/outputs: names, dtypes, shapes (-1 = dynamic batch)
    model/golden.npz     golden inputs and the outputs the trained model gave for them

bundle.json holds: format, name, version, framework, artifact + artifact_format, the signature, the golden
file and tolerance, the sha256 of every other file, the Bazel label that built it, the environment lock
digest, the git commit, the MLflow run id and metrics where known, and serving defaults (max batch size,
max queue delay). Nothing in it depends on time or the machine, so the same inputs give a byte-identical
bundle.

`verify()` checks every file's hash (and that no unlisted file slipped in) before anything is loaded;
`load_model()` then loads the artifact with loaders that never unpickle arbitrary Python
(torch.jit.load / torch.export.load), and `check_golden()` replays the golden batch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Bundle", "BundleError", "check_golden", "export_digest", "load_model", "resolve_device", "verify",
           "write_bundle"]

FORMAT = "mlenv.bundle/1"
MODEL_DIR = "model"


class BundleError(Exception):
    """A bundle that must not be served: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def signature(self) -> dict[str, Any]:
        return self.manifest["signature"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def export_digest(export_dir: Path) -> str:
    """One digest over an export folder (file names and contents): what an MLflow-sourced bundle pins."""
    digest = hashlib.sha256()
    for path in sorted(p for p in export_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(export_dir).as_posix().encode() + b"\0" + _sha256(path).encode() + b"\n")
    return "sha256:" + digest.hexdigest()


def write_bundle(export_dir: Path, out: Path, *, name: str, version: str, label: str, lock_digest: str,
                 git_commit: str, mlflow: dict[str, Any] | None = None, max_batch_size: int = 256,
                 max_queue_delay_us: int = 2000, golden_atol: float = 1e-5) -> Path:
    signature = json.loads((export_dir / "signature.json").read_text())
    artifact_name = {"torchscript": "model.pt", "torch_export": "model.pt2"}.get(signature.get("format"))
    if artifact_name is None:
        raise BundleError(f"{export_dir}/signature.json: unknown export format {signature.get('format')!r}")
    for required in (artifact_name, "signature.json", "golden.npz"):
        if not (export_dir / required).is_file():
            raise BundleError(f"{export_dir} has no {required}: is it an export folder of an engine trainer?")
    if out.exists():
        shutil.rmtree(out)
    (out / MODEL_DIR).mkdir(parents=True)
    for file in (artifact_name, "signature.json", "golden.npz"):
        shutil.copyfile(export_dir / file, out / MODEL_DIR / file)
    files = {f"{MODEL_DIR}/{f}": _sha256(out / MODEL_DIR / f) for f in sorted((artifact_name, "signature.json", "golden.npz"))}
    manifest = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "framework": "pytorch",
        "artifact": f"{MODEL_DIR}/{artifact_name}",
        "artifact_format": signature["format"],
        "signature": {"inputs": signature["inputs"], "outputs": signature["outputs"]},
        "golden": {"file": f"{MODEL_DIR}/golden.npz", "atol": golden_atol},
        "files": files,
        "built_by": label,
        "lock_digest": lock_digest,
        "git_commit": git_commit,
        "mlflow": mlflow or {},
        "serving": {"max_batch_size": max_batch_size, "max_queue_delay_us": max_queue_delay_us},
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def verify(path: Path) -> Bundle:
    """Checks the manifest and every file's sha256; raises BundleError naming the first problem."""
    path = Path(path)
    manifest_path = path / "bundle.json"
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: no bundle.json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: format {manifest.get('format')!r}, this server reads {FORMAT!r}")
    for key in ("name", "version", "artifact", "signature", "files", "golden"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: missing {key!r}")
    listed = manifest["files"]
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"bundle.json"}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise BundleError(f"{path}: files not in bundle.json: {', '.join(unlisted)} (tampered or hand-edited bundle)")
    for rel, expected in sorted(listed.items()):
        file = path / rel
        if not file.is_file():
            raise BundleError(f"{path}: {rel} is listed in bundle.json but missing")
        actual = _sha256(file)
        if actual != expected:
            raise BundleError(f"{path}: {rel} has {actual}, bundle.json pins {expected}: the bundle was modified "
                              f"after it was built; rebuild it (bazel build <its label>) and do not edit bundles")
    return Bundle(path, manifest)


def load_model(bundle: Bundle, device: str = "cpu"):
    """Loads the verified artifact onto `device` (a torch device string, e.g. "cpu", "cuda:0"); returns a
    callable taking inputs in signature order. Nothing is unpickled: TorchScript and torch.export archives
    hold tensors and code, not Python objects."""
    import torch

    artifact = bundle.path / bundle.manifest["artifact"]
    fmt = bundle.manifest.get("artifact_format", "torchscript")
    if fmt == "torchscript":
        module = torch.jit.load(str(artifact), map_location=device)
        module.eval()
        return module
    if fmt == "torch_export":
        return torch.export.load(str(artifact)).module().to(device)
    raise BundleError(f"{bundle.path}: artifact_format {fmt!r} is not servable")


def resolve_device(spec: str) -> torch.device:
    """The torch device `spec` names, checked now: a server or check must not start on a device it cannot use.
    ValueError says what is wrong and what to do."""
    import torch

    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec!r} is not a device torch knows; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "none: a CPU-only build"
            raise ValueError(f"--device {spec}: torch {torch.__version__} sees no CUDA device (CUDA in this build: "
                             f"{built}); use --device cpu, or run on a GPU machine with the CUDA environment "
                             f"(tools/bazel run --config=cuda ...)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise ValueError(f"--device {spec}: the server runs models on cpu or cuda[:N], not {device.type}")
    return device


def golden_arrays(bundle: Bundle) -> tuple[list[np.ndarray], list[np.ndarray]]:
    sig = bundle.signature
    with np.load(bundle.path / bundle.manifest["golden"]["file"], allow_pickle=False) as data:
        inputs = [data["input." + t["name"]] for t in sig["inputs"]]
        outputs = [data["output." + t["name"]] for t in sig["outputs"]]
    return inputs, outputs


def check_golden(bundle: Bundle, model=None, *, device: str = "cpu", atol: float | None = None) -> float:
    """Runs the golden inputs on `device`; returns the worst absolute difference, raises BundleError past the
    tolerance (the bundle's golden atol unless `atol` overrides it)."""
    import torch

    model = model or load_model(bundle, device)
    inputs, expected = golden_arrays(bundle)
    with torch.inference_mode():
        got = model(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in inputs))
    got = got if isinstance(got, (tuple, list)) else (got,)
    bundle_atol = float(bundle.manifest["golden"]["atol"])
    tolerance = bundle_atol if atol is None else atol
    worst = 0.0
    for spec, g, want in zip(bundle.signature["outputs"], got, expected):
        g = g.detach().cpu().numpy()
        diff = float(np.max(np.abs(g.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        worst = max(worst, diff)
        if diff > tolerance:
            hint = ("this environment does not reproduce the trained model" if torch.device(device).type == "cpu"
                    else f"kernels on {device} round differently from the CPU that wrote the golden outputs; if "
                         f"{diff:.3g} is acceptable for this model, serve with --golden-atol {diff * 2:.1g}")
            where = "" if torch.device(device).type == "cpu" else f" on {device}"
            raise BundleError(f"{bundle.path}: output {spec['name']}{where} differs from the golden outputs by "
                              f"{diff:.3g} (tolerance {tolerance}{'' if atol is None else ', from --golden-atol'}): "
                              f"{hint}")
    return worst
