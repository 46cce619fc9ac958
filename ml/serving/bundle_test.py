"""Bundles: deterministic writing, verification that catches tampering, golden replay, MLflow-pinned weights."""

import hashlib
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from ml.engine.export import export_model
from ml.serving import bundle, make_bundle
from ml.serving.testing import TinyRanker, example_inputs


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """One export for the module (with its ONNX artifact: that export takes seconds); tests never change it."""
    folder = tmp_path_factory.mktemp("export")
    export_model(TinyRanker(), example_inputs(), input_names=["ids", "dense"], output_names=["score", "prob"],
                 folder=folder)
    return folder


def build(export, out, **kw):
    args = dict(name="tiny", version="3", label="//t:b", lock_digest="sha256:l", git_commit="abc")
    args.update(kw)
    return bundle.write_bundle(export, out, **args)


def test_same_inputs_give_byte_identical_bundles(export, tmp_path):
    a, b = build(export, tmp_path / "a"), build(export, tmp_path / "b")
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(build(export, tmp_path / "c", version="4")) != tree_digest(a)


def test_manifest_records_provenance_and_signature(export, tmp_path):
    b = bundle.verify(build(export, tmp_path / "b", mlflow={"run_id": "r1", "metrics": {"eval/auc": 0.8}}))
    m = b.manifest
    assert (m["name"], m["version"], m["framework"], m["built_by"], m["git_commit"]) == ("tiny", "3", "pytorch", "//t:b", "abc")
    assert m["lock_digest"] == "sha256:l" and m["mlflow"]["run_id"] == "r1"
    assert [t["name"] for t in m["signature"]["inputs"]] == ["ids", "dense"]
    assert m["signature"]["inputs"][0] == {"name": "ids", "dtype": "int64", "shape": [-1, 4]}
    assert set(m["files"]) == {"model/model.pt", "model/model.onnx", "model/signature.json", "model/golden.npz"}
    assert m["artifacts"] == {"torchscript": "model/model.pt", "onnx": "model/model.onnx"}
    assert (m["artifact"], m["artifact_format"]) == ("model/model.pt", "torchscript")  # the default to serve
    assert bundle.check_golden(b) == 0.0
    onnx = bundle.load_model(b, fmt="onnx")
    assert type(onnx).__name__ == "OnnxModel" and bundle.check_golden(b, onnx) < 1e-6


class Unexportable(TinyRanker):
    """TinyRanker plus an op the ONNX exporter has no function for (aten.linalg_eig); TorchScript traces it."""

    def forward(self, ids, dense):
        score, prob = super().forward(ids, dense)
        eig = torch.linalg.eigvals(torch.eye(2).expand(ids.shape[0], 2, 2)).real.sum(1)
        return score + 0 * eig, prob


def test_a_model_onnx_cannot_take_fails_the_bundle_build_with_the_reason_and_the_fix(tmp_path, capsys):
    folder = tmp_path / "export"
    result = export_model(Unexportable(), example_inputs(), input_names=["ids", "dense"],
                          output_names=["score", "prob"], folder=folder)
    assert result.signature["artifacts"] == {"torchscript": "model.pt"} and not (folder / "model.onnx").exists()
    assert "aten.linalg_eig" in result.signature["export_errors"]["onnx"]
    with pytest.raises(bundle.BundleError) as info:
        build(folder, tmp_path / "b")
    message = str(info.value)
    assert "its onnx export failed" in message and "aten.linalg_eig" in message
    assert "Fix: keep TorchScript" in message and "formats = ['torchscript']" in message
    assert not (tmp_path / "b").exists(), "a failed bundle build left a folder behind"
    args = ["--export-dir", str(folder), "--name", "tiny", "--version", "1", "--out", str(tmp_path / "cli")]
    assert make_bundle.main(args) == 1 and "Fix: keep TorchScript" in capsys.readouterr().err
    assert make_bundle.main([*args, "--formats", "torchscript"]) == 0  # the fix works
    assert bundle.verify(tmp_path / "cli").manifest["artifacts"] == {"torchscript": "model/model.pt"}


def test_the_default_artifact_and_the_formats_carried_are_chosen_at_build(export, tmp_path):
    b = bundle.verify(build(export, tmp_path / "b", default_format="onnx"))
    assert (b.manifest["artifact"], b.manifest["artifact_format"]) == ("model/model.onnx", "onnx")
    assert type(bundle.load_model(b)).__name__ == "OnnxModel"
    only = bundle.verify(build(export, tmp_path / "ts", formats=["torchscript"]))
    assert set(only.manifest["files"]) == {"model/model.pt", "model/signature.json", "model/golden.npz"}
    with pytest.raises(bundle.BundleError, match="no onnx artifact in this bundle .it carries torchscript.: serve "
                                                 "one of those"):
        bundle.load_model(only, fmt="onnx")
    with pytest.raises(bundle.BundleError, match="default format 'onnx' is not among the bundled formats"):
        build(export, tmp_path / "bad", formats=["torchscript"], default_format="onnx")


def test_a_wrong_onnx_artifact_fails_the_bundle_build_at_its_golden_replay(export, tmp_path):
    other = tmp_path / "other"
    export_model(TinyRanker(bias=5.0), example_inputs(), input_names=["ids", "dense"],
                 output_names=["score", "prob"], folder=other)
    mixed = shutil.copytree(export, tmp_path / "mixed")
    (mixed / "model.onnx").write_bytes((other / "model.onnx").read_bytes())  # not the model of golden.npz
    with pytest.raises(bundle.BundleError, match="output score differs from the golden outputs by 5"):
        build(mixed, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage,message", [
    (lambda p: (p / "model/model.pt").write_bytes((p / "model/model.pt").read_bytes()[:-1] + b"x"),
     "model/model.pt has sha256:"),
    (lambda p: (p / "model/golden.npz").unlink(), "model/golden.npz is listed in bundle.json but missing"),
    (lambda p: (p / "model/extra.py").write_text("import os"), "files not in bundle.json: model/extra.py"),
    (lambda p: (p / "bundle.json").write_text("{"), "bundle.json is not valid JSON"),
])
def test_tampering_is_caught_naming_the_file(export, tmp_path, damage, message):
    out = build(export, tmp_path / "b")
    damage(out)
    with pytest.raises(bundle.BundleError, match="") as info:
        bundle.verify(out)
    assert message in str(info.value)


def test_golden_mismatch_is_reported(export, tmp_path):
    out = build(export, tmp_path / "b")
    import numpy as np

    with np.load(out / "model/golden.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.score"] = arrays["output.score"] + 1.0
    np.savez(out / "model/golden.npz", **arrays)
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["files"]["model/golden.npz"] = bundle._sha256(out / "model/golden.npz")
    (out / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match="output score differs from the golden outputs by 1"):
        bundle.check_golden(bundle.verify(out))
    assert 0.99 < bundle.check_golden(bundle.verify(out), atol=1.5) < 1.01  # an explicit, looser tolerance
    with pytest.raises(bundle.BundleError, match=r"by 1 \(tolerance 0.5, from --golden-atol\)"):
        bundle.check_golden(bundle.verify(out), atol=0.5)


def test_weights_from_an_mlflow_run_pinned_by_digest(export, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(export), "export")
    client.log_metric(run.info.run_id, "eval/auc", 0.77)
    digest = bundle.export_digest(export)
    common = ["--name", "tiny", "--version", "1", "--mlflow-run", run.info.run_id]
    assert make_bundle.main(common + ["--mlflow-sha256", digest, "--out", str(tmp_path / "ok")]) == 0
    b = bundle.verify(tmp_path / "ok")
    assert b.manifest["mlflow"] == {"run_id": run.info.run_id, "metrics": {"eval/auc": 0.77}}
    assert make_bundle.main(common + ["--mlflow-sha256", "sha256:" + "0" * 64, "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert f'pin it: mlflow_sha256 = "{digest}"' in err
    assert make_bundle.main(common + ["--out", str(tmp_path / "unpinned")]) == 1
    assert "needs --mlflow-sha256" in capsys.readouterr().err


def test_check_cli_passes_and_fails(export, tmp_path, capsys):
    from ml.serving import check_bundle

    out = build(export, tmp_path / "b")
    assert check_bundle.main([str(out)]) == 0
    assert check_bundle.main([str(out), "--device", "cpu", "--golden-atol", "0", "--runtime", "torchscript"]) == 0
    # ONNX Runtime is not bit-exact with the eager model, so a zero tolerance over every artifact fails, naming it
    assert check_bundle.main([str(out), "--golden-atol", "0"]) == 1
    assert "tolerance 0.0, from --golden-atol" in capsys.readouterr().err
    assert check_bundle.main([str(out), "--runtime", "tensorrt"]) == 1
    assert "no tensorrt artifact in this bundle (it carries onnx, torchscript)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        check_bundle.main([str(out), "--device", "tpu"])
    assert exit_.value.code == 2 and "--device 'tpu' is not a device the server knows" in capsys.readouterr().err
    (out / "model/model.pt").write_bytes(b"not a model")
    assert check_bundle.main([str(out)]) == 1


def _rewrite_manifest(out: Path, **changes) -> None:
    manifest = json.loads((out / "bundle.json").read_text())
    manifest.update(changes)
    (out / "bundle.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("case", ["absolute artifact", "artifact outside", "golden outside", "unhashed artifact",
                                  "files key outside"])
def test_every_path_a_bundle_names_is_relative_inside_and_hashed(export, tmp_path, case):
    out = build(export, tmp_path / "b")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(out / "model/model.pt", outside / "model.pt")
    shutil.copy(out / "model/golden.npz", outside / "golden.npz")
    manifest = json.loads((out / "bundle.json").read_text())
    if case == "absolute artifact":  # nothing listed, nothing present: only the path says where the model is
        shutil.rmtree(out / "model")
        _rewrite_manifest(out, artifact=str(outside / "model.pt"), files={},
                          golden={"file": str(outside / "golden.npz"), "atol": 1e-5})
        message = "'artifact' is '/"
    elif case == "artifact outside":
        files = dict(manifest["files"], **{"../elsewhere/model.pt": bundle._sha256(outside / "model.pt")})
        _rewrite_manifest(out, artifact="../elsewhere/model.pt", files=files)
        message = "a key of 'files' is '../elsewhere/model.pt'"
    elif case == "golden outside":
        _rewrite_manifest(out, golden={"file": "model/../../elsewhere/golden.npz", "atol": 1e-5})
        message = "'golden.file' is 'model/../../elsewhere/golden.npz'"
    elif case == "unhashed artifact":  # the artifact is named, but `files` does not pin it
        files = {k: v for k, v in manifest["files"].items() if k != "model/model.pt"}
        (out / "model/model.pt").unlink()
        _rewrite_manifest(out, files=files)
        message = "'artifact' model/model.pt is not in 'files'"
    else:
        _rewrite_manifest(out, files=dict(manifest["files"], **{"/etc/hostname": "sha256:0"}))
        message = "a key of 'files' is '/etc/hostname'"
    with pytest.raises(bundle.BundleError) as info:
        bundle.load_model(bundle.verify(out))
    assert message in str(info.value)
    assert "must be relative and inside the bundle" in str(info.value) or "nothing pins its hash" in str(info.value)


def test_a_bundle_of_symbolic_links_verifies_by_content(export, tmp_path):
    out = build(export, tmp_path / "b")
    real = tmp_path / "model.pt"
    (out / "model/model.pt").rename(real)
    (out / "model/model.pt").symlink_to(real)  # how Bazel's runfiles hold a bundle
    assert bundle.verify(out).data("model/model.pt") == real.read_bytes()
    real.write_bytes(real.read_bytes() + b"\0")  # what the link points at changed: the hash says so
    with pytest.raises(bundle.BundleError, match="model/model.pt has sha256:"):
        bundle.verify(out)


def test_load_uses_the_verified_bytes_not_the_file_swapped_after_the_check(export, tmp_path):
    out = build(export, tmp_path / "b")
    verified = bundle.verify(out)
    other = tmp_path / "other"
    export_model(TinyRanker(bias=5.0), example_inputs(), input_names=["ids", "dense"], output_names=["score", "prob"],
                 folder=other)
    (out / "model/model.pt").write_bytes((other / "model.pt").read_bytes())  # swapped between check and load
    model = bundle.load_model(verified)
    assert bundle.check_golden(verified, model) == 0.0
    ids, dense = example_inputs(3)
    with torch.inference_mode():
        want = TinyRanker()(ids, dense)[0].numpy()
    got = model.run([ids.numpy(), dense.numpy()])[0]
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg="the model loaded was not the one verified")


def test_write_bundle_refuses_to_delete_a_folder_that_is_not_a_bundle(export, tmp_path):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(bundle.BundleError, match=r"is not a bundle written by write_bundle \(it holds notes.txt\)"):
        build(export, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    previous = build(export, tmp_path / "b")
    (previous / "bundle.json.sig").write_bytes(b"x" * 64)
    assert bundle.verify(build(export, previous, version="4")).version == "4"  # a previous bundle is replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bundle.verify(build(export, empty)).version == "3"


def test_signed_bundles_verify_only_with_their_key(export, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    bundle.generate_signing_key(keys / "ci.pem", keys / "ci.pub")
    bundle.generate_signing_key(keys / "other.pem", keys / "other.pub")
    assert (keys / "ci.pem").stat().st_mode & 0o777 == 0o600
    out = build(export, tmp_path / "b")
    with pytest.raises(bundle.BundleError, match="no bundle.json.sig, and this server only serves signed bundles"):
        bundle.verify(out, public_key=keys / "ci.pub")
    bundle.sign(out, keys / "ci.pem")
    assert bundle.verify(out, public_key=keys / "ci.pub").name == "tiny"
    assert bundle.verify(out).name == "tiny"  # without a key: integrity only, as before
    with pytest.raises(bundle.BundleError, match="not a signature of this bundle.json by the server's key"):
        bundle.verify(out, public_key=keys / "other.pub")
    # A writer of the repository swaps the model and rehashes bundle.json: hashes pass, the signature does not.
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["serving"]["max_batch_size"] = 1
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert bundle.verify(out).manifest["serving"]["max_batch_size"] == 1
    with pytest.raises(bundle.BundleError, match="not a signature of this bundle.json"):
        bundle.verify(out, public_key=keys / "ci.pub")
    with pytest.raises(bundle.BundleError, match="cannot read it as a PEM public key"):
        bundle.verify(out, public_key=keys / "ci.pem")


def test_make_bundle_cli_signs_and_check_cli_verifies_the_signature(export, tmp_path, capsys):
    from ml.serving import check_bundle

    private, public = tmp_path / "ci.pem", tmp_path / "ci.pub"
    assert make_bundle.main(["--new-signing-key", str(private), str(public)]) == 0
    out = tmp_path / "b"
    assert make_bundle.main(["--export-dir", str(export), "--out", str(out), "--name", "tiny", "--version", "1",
                             "--sign-key", str(private)]) == 0
    assert check_bundle.main([str(out), "--public-key", str(public)]) == 0
    assert "signature verified (Ed25519)" in capsys.readouterr().out
    (out / "bundle.json.sig").unlink()
    assert check_bundle.main([str(out), "--public-key", str(public)]) == 1
    assert "no bundle.json.sig" in capsys.readouterr().err
