"""`sweep --on k8s` manifests (golden file, strict schema validation) and every `--on ray/k8s` refusal.

Nothing here starts a trial, a cluster or a server: each refusal must come before anything starts, with exit
code 2 and a message naming the fix. The golden file (testdata/k8s_sweep.yaml) is the exact `--dry-run`
output for one fixed command line and a small OCI layout written here (so the digest is fixed). To
regenerate it after a deliberate change:
    tools/bazel test //tools/sweep:sweep_backends_test --test_env=SWEEP_GOLDEN_UPDATE=$PWD/tools/sweep/testdata
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tools.sweep import sweep
from tools.testing.oci_layout import write_image_info

TESTDATA = Path(__file__).parent / "testdata"
SPACE = TESTDATA / "toy_space.yaml"
SUPPORTED_K8S = ("1.25.0", "1.37.0")  # as tools/launch/k8s_test.py
ENTRYPOINT = ["/usr/bin/python3.11", "-S", "/app/entrypoint.py", "mlenv/ml/engine/toy_train.py"]
BASE = ["--trainer", "ml/engine/toy_train", "--config-class", "ml.engine.testing.toy:ToyConfig", "--project", "toy",
        "--space", str(SPACE), "--trials", "8"]
PASSWORD = "s3cr3t-pw"  # noqa: S105 - a made-up one: it must not reach the manifests
K8S = ["--on", "k8s", "--parallel", "3", "--repository", "registry.example.com/ml/toy", "--storage-secret",
       "sweep-db:url", "--tracking-uri", "http://mlflow.ml.svc:5000", "--namespace", "tuning", "--name",
       "toy-sweep-golden", "--memory-per-worker", "2Gi", "--set", "rows=256"]


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = sweep.main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def image_info(tmp_path) -> tuple[Path, str]:
    """A minimal real OCI layout (config + manifest, no layers) and the info file :sweep_k8s would pass."""
    return write_image_info(tmp_path, ENTRYPOINT, "sweep_image_info.json", "//ml/engine:toy_image")


def dry_run(info: Path, *extra: str) -> str:
    code, out, err = run(*BASE, *K8S, "--dry-run", "--image-info", str(info),
                         "--storage", f"postgresql+psycopg://mlenv:{PASSWORD}@db.internal:5432/sweeps", *extra)
    assert code == 0, err
    return out


def test_dry_run_matches_the_golden_file(image_info):
    out = dry_run(image_info[0])
    golden = TESTDATA / "k8s_sweep.yaml"
    if os.environ.get("SWEEP_GOLDEN_UPDATE"):
        (Path(os.environ["SWEEP_GOLDEN_UPDATE"]) / golden.name).write_text(out)
    assert out == golden.read_text(), "k8s_sweep.yaml differs from the dry-run output; if intended, regenerate " \
                                      "(see this file's docstring)"


@pytest.mark.parametrize("version", SUPPORTED_K8S)
def test_manifests_are_valid_kubernetes_strictly(image_info, version):
    objects = list(yaml.safe_load_all(dry_run(image_info[0])))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    bad = json.loads(json.dumps(objects[1]))
    bad["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_job_runs_n_workers_in_the_image_by_digest_with_the_url_from_a_secret(image_info):
    info, digest = image_info
    text = dry_run(info)
    assert PASSWORD not in text and "db.internal" not in text, "the storage URL leaked into the manifests"
    configmap, job = yaml.safe_load_all(text)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    assert job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"registry.example.com/ml/toy@{digest}"
    assert container["command"] == [ENTRYPOINT[0], "-S", ENTRYPOINT[2], "mlenv/tools/sweep/sweep.py"]
    args = container["args"]
    assert args[:3] == ["--worker", "--worker-index", "$(JOB_COMPLETION_INDEX)"]
    assert args[args.index("--storage") + 1] == "env:MLENV_SWEEP_STORAGE"
    assert json.loads(args[args.index("--trainer-command") + 1]) == ENTRYPOINT
    assert args[args.index("--set") + 1] == "rows=256" and args[args.index("--trials") + 1] == "8"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLENV_SWEEP_STORAGE"]["valueFrom"] == {"secretKeyRef": {"name": "sweep-db", "key": "url"}}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.ml.svc:5000"
    # The space file travels in the ConfigMap the pods mount.
    assert yaml.safe_load(configmap["data"]["space.yaml"]) == yaml.safe_load(SPACE.read_text())
    assert pod["volumes"] == [{"name": "space", "configMap": {"name": configmap["metadata"]["name"]}}]
    space_arg = args[args.index("--space") + 1]
    assert space_arg.startswith(container["volumeMounts"][0]["mountPath"] + "/")


def test_storage_from_the_environment(monkeypatch, tmp_path):
    code, _, err = run(*BASE, "--storage", "env:MLENV_SWEEP_STORAGE_UNSET", "--report-only")
    assert code == 2 and "MLENV_SWEEP_STORAGE_UNSET is not set" in err, err
    monkeypatch.setenv("MLENV_SWEEP_STORAGE_T", f"sqlite:///{tmp_path}/x.db")
    code, _, err = run(*BASE, "--storage", "env:MLENV_SWEEP_STORAGE_T", "--report-only")
    assert code == 2 and "no study 'toy-toy_space' in sqlite:///" in err, err


REFUSALS = [
    (["--on", "ray"], "--on ray needs --address"),
    (["--on", "ray", "--address", "ray://head:10001"], "Ray Client port"),
    (["--on", "ray", "--address", "http://10.1.2.3:8265"], "cannot share a sqlite file"),
    (["--on", "ray", "--address", "10.1.2.3:8265", "--storage", "postgresql+psycopg://u@db:5432/s"],
     "MLFLOW_TRACKING_URI to an MLflow server"),
    (["--on", "ray", "--address", "http://127.0.0.1:1"], "did not answer within"),
    (["--on", "ray", "--address", "local", "--worker"], "phases it runs itself"),
    (["--on", "ray", "--address", "local", "--dry-run"], "--dry-run is for --on k8s"),
    (["--address", "local"], "--address is for --on ray"),
    (["--dry-run"], "--dry-run is for --on k8s"),
    (["--on", "k8s", "--dry-run"], "--on k8s needs --repository, --storage-secret, --tracking-uri"),
    (["--on", "k8s", "--dry-run", "--repository", "r/x", "--storage-secret", "nokey", "--tracking-uri", "http://m"],
     "expected SECRET:KEY"),
    (["--on", "k8s", "--dry-run", "--repository", "r/x", "--storage-secret", "s:k", "--tracking-uri",
      "sqlite:///m.db"], "pods cannot write to a file"),
    (["--on", "k8s", "--dry-run", "--repository", "r/x", "--storage-secret", "s:k", "--tracking-uri", "http://m"],
     "has no train image"),
    (["--on", "k8s", "--repository", "r/x", "--storage-secret", "s:k", "--tracking-uri", "http://m"],
     "cannot share a sqlite file"),
    (["--on", "k8s", "--dry-run", "--address", "local"], "--address is for --on ray"),
    (["--trainer-command", "not json", "--report-only"], "expected a JSON list of strings"),
]


@pytest.mark.parametrize(("extra", "message"), REFUSALS, ids=[" ".join(r[0]) for r in REFUSALS])
def test_refusals_name_the_fix(extra, message, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    code, out, err = run(*BASE, *extra)
    assert code == 2, (out, err)
    assert message in err, err
    assert not (tmp_path / "mlflow.db").exists(), "a refusal touched the tracking store"


def test_k8s_name_must_be_a_dns_label(image_info):
    code, _, err = run(*BASE, *K8S[:-6], "--name", "Toy_Sweep", "--dry-run", "--image-info", str(image_info[0]))
    assert code == 2 and "a Job name must be lowercase" in err, err


@pytest.mark.parametrize(("changes", "message"), [
    ({"objective": "median"}, "objective 'median' is not one of last, best_epoch"),
    ({"objective": "best_epoch", "metric": "train/loss"}, "best_epoch needs an eval/ metric"),
])
def test_objective_refusals(tmp_path, changes, message):
    raw = yaml.safe_load(SPACE.read_text())
    raw.update(changes)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, _, err = run(*BASE, "--space", str(path), "--report-only")
    assert code == 2 and message in err, err
