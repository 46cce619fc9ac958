"""Model bundles: the versioned, verifiable unit that leaves CI and that the model server loads.

A bundle is a folder:

    bundle.json          the manifest (below)
    model/model.pt       TorchScript archive (or model/model.pt2: a torch.export program, or
                         model/saved_model/: a TensorFlow SavedModel folder, every file of it listed and hashed)
    model/model.onnx     the same model as ONNX (optional; a bundle may carry several artifacts of one model)
    model/signature.json inputs/outputs: names, dtypes, shapes (-1 = dynamic batch)
    model/golden.npz     golden inputs and the outputs the trained model gave for them

bundle.json holds: format, name, version, framework, artifact + artifact_format (the default artifact),
artifacts ({format: path}: every artifact carried, each hashed like any file), the signature, the golden
file and tolerance, the sha256 of every other file, the Bazel label that built it, the environment lock
digest, the git commit, the MLflow run id and metrics where known, and serving defaults (max batch size,
max queue delay). Nothing in it depends on time or the machine, so the same inputs give a byte-identical
bundle.

`verify()` checks every file's hash (and that no unlisted file slipped in) before anything is loaded;
`load_model()` then loads the artifact with the runtime its format names (ml/serving/runtimes), whose loaders
never unpickle arbitrary Python (torch.jit.load / torch.export.load), and `check_golden()` replays the golden
batch through it.

What verify() guarantees, and what not:
- Every path the manifest names (the artifact, the golden file, each entry of `files`) must be a relative
  path inside the bundle, listed in `files` and hashed. Files may be symbolic links (Bazel's runfiles are):
  what is hashed is the content read through them. verify() reads each file once and keeps the verified
  bytes: load_model() and check_golden() load from those bytes, never by path again, so a file swapped
  between the check and the load is never used.
- Integrity is not authenticity: the hashes live in bundle.json itself, so whoever can write the model
  repository can write a new bundle.json with new hashes. To stop that, sign bundles (`sign()`, or
  make_bundle --sign-key) with an Ed25519 key and give the server the public key (--bundle-public-key): it
  then refuses any bundle whose bundle.json.sig is missing or is not a signature of bundle.json's exact
  bytes by that key. Keep the private key with CI, away from the machines that serve.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Bundle", "BundleError", "artifact_for", "check_golden", "check_replaceable", "export_digest",
           "generate_signing_key", "load_model", "load_public_key", "resolve_device", "sign", "verify", "write_bundle"]

FORMAT = "mlenv.bundle/1"
# artifact_format -> (artifact name inside model/, framework); a name without a suffix is a folder artifact.
ARTIFACTS = {"torchscript": ("model.pt", "pytorch"), "torch_export": ("model.pt2", "pytorch"),
             "tf_saved_model": ("saved_model", "tensorflow")}
FOLDER_FORMATS = {"tf_saved_model": "saved_model.pb"}  # folder artifact format -> the file it must hold
MODEL_DIR = "model"
MANIFEST = "bundle.json"
SIGNATURE = "bundle.json.sig"  # Ed25519 signature of bundle.json's exact bytes (64 bytes, raw)


class BundleError(Exception):
    """A bundle that must not be served: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    # The verified bytes of every file in `files`, by relative path: what load_model and check_golden read.
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def data(self, rel: str) -> bytes:
        """The verified bytes of the bundle file `rel`; BundleError if verify() did not hash it."""
        try:
            return self.blobs[rel]
        except KeyError:
            raise BundleError(f"{self.path}: {rel} was not verified; load bundles with verify() first") from None

    def artifact_data(self, rel: str | None = None) -> bytes | dict[str, bytes]:
        """The verified artifact at `rel` (default: the bundle's default artifact): its bytes, or for a folder
        artifact (a SavedModel) {path inside it: bytes}."""
        rel = rel or self.manifest["artifact"]
        if rel in self.blobs:
            return self.blobs[rel]
        inside = {k[len(rel) + 1:]: v for k, v in self.blobs.items() if k.startswith(rel + "/")}
        if not inside:
            raise BundleError(f"{self.path}: the artifact {rel} was not verified; load bundles with verify() first")
        return inside

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


# Exports that name one artifact (before "artifacts", and TensorFlow's): format -> its name in the export.
LEGACY_ARTIFACTS = {"torchscript": "model.pt", "torch_export": "model.pt2", "tf_saved_model": "saved_model"}


def _export_artifacts(export_dir: Path, signature: dict) -> tuple[dict[str, str], dict[str, str]]:
    """The export's artifacts ({format: file name}) and the formats its exporter could not write ({format: why})."""
    primary = signature.get("format")
    artifacts = signature.get("artifacts") or ({primary: LEGACY_ARTIFACTS[primary]} if primary in LEGACY_ARTIFACTS else {})
    if primary not in artifacts:
        raise BundleError(f"{export_dir}/signature.json: unknown export format {primary!r}")
    for fmt, file in artifacts.items():
        if not isinstance(file, str) or "/" in file or "\\" in file or file in ("", ".", "..", "signature.json",
                                                                                "golden.npz"):
            raise BundleError(f"{export_dir}/signature.json: artifact {fmt} is {file!r}, not a file name of the export")
    return artifacts, dict(signature.get("export_errors") or {})


def write_bundle(export_dir: Path, out: Path, *, name: str, version: str, label: str, lock_digest: str,
                 git_commit: str, mlflow: dict[str, Any] | None = None, max_batch_size: int = 256,
                 max_queue_delay_us: int = 2000, golden_atol: float = 1e-5, formats: list[str] | None = None,
                 default_format: str | None = None) -> Path:
    """Writes the bundle of `export_dir` to `out`. `formats`: the artifacts to carry (default: every one the
    export wrote or tried to write, so an ONNX export that failed fails here with the exporter's reason);
    `default_format`: the one a server runs unless told otherwise (default: the export's main format). Every
    artifact carried is replayed against the golden batch before this returns; on any error `out` is removed."""
    try:
        signature = json.loads((export_dir / "signature.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{export_dir}/signature.json: cannot read it ({exc}); is {export_dir} an export folder "
                          f"of an engine trainer?") from None
    artifacts, errors = _export_artifacts(export_dir, signature)
    wanted = list(dict.fromkeys(formats or [*artifacts, *errors]))
    for fmt in wanted:
        if fmt in errors and fmt not in artifacts:
            raise BundleError(f"{export_dir}: the model has no {fmt} artifact: its {fmt} export failed when the model "
                              f"was exported: {errors[fmt]}\nFix: keep TorchScript: bundle only the formats that "
                              f"exported (ml_model_bundle(formats = [{signature['format']!r}]), make_bundle --formats "
                              f"{signature['format']}), or change the model so the {fmt} exporter accepts it")
        if fmt not in artifacts:
            raise BundleError(f"{export_dir}: no {fmt} artifact in this export (it has: {', '.join(artifacts)}); "
                              f"bundle one of those, or export again with a trainer that writes {fmt}")
    default = default_format or (signature["format"] if signature["format"] in wanted else wanted[0])
    if default not in wanted:
        raise BundleError(f"default format {default!r} is not among the bundled formats {', '.join(wanted)}: add it "
                          f"to formats or choose one of those")
    files_in = [artifacts[f] for f in wanted]
    for required in ("signature.json", "golden.npz"):
        if not (export_dir / required).is_file():
            raise BundleError(f"{export_dir} has no {required}: is it an export folder of an engine trainer?")
    for fmt in wanted:
        file = artifacts[fmt]
        if fmt in FOLDER_FORMATS:
            if not (export_dir / file / FOLDER_FORMATS[fmt]).is_file():
                raise BundleError(f"{export_dir} has no {file}/{FOLDER_FORMATS[fmt]}: signature.json says {fmt}, so "
                                  f"{file}/ must be that folder; re-export the model")
        elif not (export_dir / file).is_file():
            raise BundleError(f"{export_dir} has no {file}: is it an export folder of an engine trainer?")
    if out.exists() or out.is_symlink():
        check_replaceable(out)
        shutil.rmtree(out)
    try:
        (out / MODEL_DIR).mkdir(parents=True)
        for file in (*files_in, "signature.json", "golden.npz"):
            if (export_dir / file).is_dir():
                # A folder artifact (a SavedModel): every file, read through links (Bazel's trees are links).
                shutil.copytree(export_dir / file, out / MODEL_DIR / file)
            else:
                shutil.copyfile(export_dir / file, out / MODEL_DIR / file)
        files = {p.relative_to(out).as_posix(): _sha256(p) for p in sorted((out / MODEL_DIR).rglob("*")) if p.is_file()}
        manifest = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "framework": ARTIFACTS.get(signature["format"], ("", "pytorch"))[1],
            "artifact": f"{MODEL_DIR}/{artifacts[default]}",
            "artifact_format": default,
            "artifacts": {f: f"{MODEL_DIR}/{artifacts[f]}" for f in wanted},
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
        written = verify(out)
        for fmt in wanted:  # each artifact as a server would load it, against the trained model's outputs
            check_golden(written, load_model(written, "cpu", fmt=fmt))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def check_replaceable(out: Path) -> None:
    """write_bundle replaces `out` only if it is an empty folder or a bundle written before (its bundle.json
    and the files it lists, nothing else): a mistyped --out must never delete someone's folder."""
    if out.is_symlink() or not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder; choose another output path or remove it yourself")
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()}
    if not present:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        ours = manifest.get("format") == FORMAT and present <= {MANIFEST, SIGNATURE, *manifest.get("files", {})}
    except (OSError, ValueError, AttributeError, TypeError):
        ours = False
    if not ours:
        shown = ", ".join(sorted(present)[:5]) + (", ..." if len(present) > 5 else "")
        raise BundleError(f"{out} exists and is not a bundle written by write_bundle (it holds {shown}); refusing "
                          f"to delete it: choose an empty or new output folder")


def _inside(manifest_path: Path, what: str, rel: Any) -> str:
    """`rel` if it is a plain relative path inside the bundle; BundleError naming the field otherwise."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or "\\" in rel or any(part in ("", ".", "..") for part in parts):
        raise BundleError(f"{manifest_path}: {what} is {rel!r}; every path a bundle names must be relative and inside "
                          f"the bundle (like 'model/model.pt': no leading '/', no '..', no '\\'): rebuild the bundle")
    return rel


def _read_regular(path: Path, rel: str) -> bytes:
    """The bytes of bundle file `rel`, read once through one descriptor (hashed, then loaded from memory)."""
    try:
        fd = os.open(path / rel, os.O_RDONLY)
    except FileNotFoundError:
        raise BundleError(f"{path}: {rel} is listed in bundle.json but missing") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read {rel}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BundleError(f"{path}: {rel} is not a regular file")
        return fh.read()


def verify(path: Path, public_key: Any = None) -> Bundle:
    """Checks the manifest, the paths it names and every file's sha256 (and, given an Ed25519 `public_key`
    or the path of its PEM file, the signature of bundle.json); raises BundleError naming the first problem.
    The returned Bundle carries the verified bytes, which every later load reads."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not a bundle: no bundle.json")
    manifest_bytes = _read_regular(path, MANIFEST)
    if public_key is not None:
        _check_signature(path, manifest_bytes, public_key)
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{manifest_path}: format {got!r}, this server reads {FORMAT!r}")
    for key in ("name", "version", "artifact", "signature", "files", "golden"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: missing {key!r}")
    listed = manifest["files"]
    if not isinstance(listed, dict):
        raise BundleError(f"{manifest_path}: 'files' must map relative paths to sha256 digests")
    for rel in listed:
        _inside(manifest_path, "a key of 'files'", rel)
    golden = manifest["golden"].get("file") if isinstance(manifest["golden"], dict) else None
    artifacts = manifest.get("artifacts", {})
    if not isinstance(artifacts, dict):
        raise BundleError(f"{manifest_path}: 'artifacts' must map artifact formats to paths in the bundle")
    named = [("'artifact'", manifest["artifact"], manifest.get("artifact_format")), ("'golden.file'", golden, None),
             *((f"'artifacts.{fmt}'", rel, fmt) for fmt, rel in sorted(artifacts.items()))]
    for what, rel, fmt in named:
        if fmt in FOLDER_FORMATS:
            # A folder artifact: the files under it are in `files` (checked below); the one file that makes it a
            # model of its format must be among them, and the folder itself is not a file.
            folder = _inside(manifest_path, what, rel)
            if f"{folder}/{FOLDER_FORMATS[fmt]}" not in listed:
                raise BundleError(f"{manifest_path}: {what} {folder} is a {fmt} folder but 'files' lists no "
                                  f"{folder}/{FOLDER_FORMATS[fmt]}: rebuild the bundle")
            if folder in listed:
                raise BundleError(f"{manifest_path}: {what} {folder} is a {fmt} folder, but 'files' lists it as a "
                                  f"file: rebuild the bundle")
            continue
        _inside(manifest_path, what, rel)
        if rel not in listed:
            raise BundleError(f"{manifest_path}: {what} {rel} is not in 'files', so nothing pins its hash: rebuild "
                              f"the bundle (write_bundle lists every file it writes)")
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {MANIFEST, SIGNATURE}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise BundleError(f"{path}: files not in bundle.json: {', '.join(unlisted)} (tampered or hand-edited bundle)")
    blobs = {}
    for rel, expected in sorted(listed.items()):
        data = _read_regular(path, rel)
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise BundleError(f"{path}: {rel} has {actual}, bundle.json pins {expected}: the bundle was modified "
                              f"after it was built; rebuild it (bazel build <its label>) and do not edit bundles")
        blobs[rel] = data
    return Bundle(path, manifest, blobs)


def load_public_key(key: Any):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, (str, Path)):
        try:
            key = serialization.load_pem_public_key(Path(key).read_bytes())
        except (OSError, ValueError) as exc:
            raise BundleError(f"bundle public key {key}: cannot read it as a PEM public key ({exc}); give the .pub "
                              f"file written by generate_signing_key / make_bundle --new-signing-key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"bundle public key: {type(key).__name__} is not an Ed25519 public key")
    return key


def _check_signature(path: Path, manifest_bytes: bytes, public_key: Any) -> None:
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    try:
        signature = _read_regular(path, SIGNATURE)
    except BundleError:
        raise BundleError(f"{path}: no {SIGNATURE}, and this server only serves signed bundles: sign it with the "
                          f"CI key (make_bundle --sign-key, or bundle.sign())") from None
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{path}: {SIGNATURE} is not a signature of this bundle.json by the server's key: the "
                          f"bundle was changed or signed by another key; rebuild and sign it in CI") from None


def sign(path: Path, private_key_pem: Path) -> Path:
    """Signs `path`/bundle.json with the Ed25519 private key in the PEM file; writes and returns bundle.json.sig."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(private_key_pem).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"signing key {private_key_pem}: cannot read it as an unencrypted PEM private key "
                          f"({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {private_key_pem}: {type(key).__name__} is not an Ed25519 key")
    out = Path(path) / SIGNATURE
    out.write_bytes(key.sign((Path(path) / MANIFEST).read_bytes()))
    return out


def generate_signing_key(private_pem: Path, public_pem: Path) -> None:
    """Writes a new Ed25519 key pair: the private key (mode 0600) for CI, the public key for the servers."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    fd = os.open(private_pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    Path(public_pem).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))


def artifact_for(bundle: Bundle, fmt: str | None = None) -> tuple[str, str]:
    """(format, path in the bundle) of the artifact to serve: the bundle's default, or the one of format `fmt`."""
    default = bundle.manifest.get("artifact_format", "torchscript")
    artifacts = {default: bundle.manifest["artifact"], **bundle.manifest.get("artifacts", {})}
    fmt = fmt or default
    if fmt not in artifacts:
        raise BundleError(f"{bundle.path}: no {fmt} artifact in this bundle (it carries {', '.join(sorted(artifacts))}): "
                          f"serve one of those (--runtime), or rebuild the bundle with {fmt} in its formats")
    return fmt, artifacts[fmt]


def load_model(bundle: Bundle, device: Any = "cpu", *, threads: int | None = None, fmt: str | None = None):
    """Loads the verified artifact of format `fmt` (default: the bundle's default artifact) onto `device`
    ("cpu", "cuda", "cuda:N") with the runtime its format names (ml/serving/runtimes); returns the runtime's
    model: `.run(list of arrays in signature order)`. Nothing is unpickled: every servable format holds
    tensors and code, not Python objects. ValueError if the device cannot be used."""
    from ml.serving import runtimes

    fmt, rel = artifact_for(bundle, fmt)
    if fmt not in runtimes.RUNTIMES:
        raise BundleError(f"{bundle.path}: artifact_format {fmt!r} is not servable (this server runs "
                          f"{', '.join(sorted(runtimes.RUNTIMES))})")
    # the verified bytes (every file of a folder artifact), never the path again
    try:
        return runtimes.load(bundle.artifact_data(rel), fmt, device, threads, signature=bundle.signature)
    except runtimes.LoadError as exc:
        raise BundleError(f"{bundle.path}: {exc}") from None  # the runtime's reason, with the bundle it is about


def resolve_device(spec: Any):
    """The runtimes.Device `spec` names ("cpu", "cuda", "cuda:N"); ValueError says what to give instead. The
    runtime that loads a model onto it checks that the device exists."""
    from ml.serving import runtimes

    return runtimes.parse_device(spec)


def golden_arrays(bundle: Bundle) -> tuple[list[np.ndarray], list[np.ndarray]]:
    sig = bundle.signature
    with np.load(io.BytesIO(bundle.data(bundle.manifest["golden"]["file"])), allow_pickle=False) as data:
        inputs = [data["input." + t["name"]] for t in sig["inputs"]]
        outputs = [data["output." + t["name"]] for t in sig["outputs"]]
    return inputs, outputs


def check_golden(bundle: Bundle, model=None, *, device: Any = "cpu", atol: float | None = None) -> float:
    """Runs the golden inputs through `model` (a runtime model from load_model; loaded onto `device` if not
    given); returns the worst absolute difference, raises BundleError past the tolerance (the bundle's golden
    atol unless `atol` overrides it)."""
    model = model or load_model(bundle, device)
    inputs, expected = golden_arrays(bundle)
    got = model.run([np.ascontiguousarray(a) for a in inputs])
    bundle_atol = float(bundle.manifest["golden"]["atol"])
    tolerance = bundle_atol if atol is None else atol
    on_cpu = model.device.type == "cpu"
    worst = 0.0
    for spec, g, want in zip(bundle.signature["outputs"], got, expected, strict=True):
        diff = float(np.max(np.abs(g.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        worst = max(worst, diff)
        if diff > tolerance:
            hint = ("this environment does not reproduce the trained model" if on_cpu
                    else f"kernels on {model.device} round differently from the CPU that wrote the golden outputs; "
                         f"if {diff:.3g} is acceptable for this model, serve with --golden-atol {diff * 2:.1g}")
            where = "" if on_cpu else f" on {model.device}"
            raise BundleError(f"{bundle.path}: output {spec['name']}{where} differs from the golden outputs by "
                              f"{diff:.3g} (tolerance {tolerance}{'' if atol is None else ', from --golden-atol'}): "
                              f"{hint}")
    return worst
