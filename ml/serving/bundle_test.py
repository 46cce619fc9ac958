"""Bundles: deterministic writing, verification that catches tampering, golden replay, MLflow-pinned weights."""

import hashlib
import json
from pathlib import Path

import mlflow
import pytest

from ml.engine.export import export_model
from ml.serving import bundle, make_bundle
from ml.serving.testing import TinyRanker, example_inputs


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "export"
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
    assert set(m["files"]) == {"model/model.pt", "model/signature.json", "model/golden.npz"}
    assert bundle.check_golden(b) == 0.0


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
    assert check_bundle.main([str(out), "--device", "cpu", "--golden-atol", "0"]) == 0
    with pytest.raises(SystemExit) as exit_:
        check_bundle.main([str(out), "--device", "tpu"])
    assert exit_.value.code == 2 and "--device 'tpu' is not a device torch knows" in capsys.readouterr().err
    (out / "model/model.pt").write_bytes(b"not a model")
    assert check_bundle.main([str(out)]) == 1
