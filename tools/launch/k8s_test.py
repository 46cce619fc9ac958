"""--on k8s: golden dry-run manifests per flavour, schema validation, digest pinning, bad input.

The golden files (testdata/<flavour>.yaml) are the launcher's exact `--dry-run` output for one fixed command
line and one small OCI layout written here (so the digest is fixed). To regenerate them after a deliberate
change: tools/bazel test //tools/launch:k8s_test --test_env=LAUNCH_GOLDEN_UPDATE=$PWD/tools/launch/testdata

Built-in kinds (Service, Job) are validated with kubernetes-validate --strict (unknown fields rejected)
against the oldest and newest Kubernetes we support. TrainJob is a CRD: kubernetes-validate has no CRD
schemas and the Kubeflow SDK is not in the lock, so its embedded core parts (container, env, resources,
scheduling fields) are validated as a strict v1 Pod, and its own fields are checked against the
trainer.kubeflow.org/v1alpha1 field list below (written from the upstream API reference, not machine-read).
"""

from __future__ import annotations

import importlib
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tools.launch import cli
from tools.launch.k8s import common
from tools.testing.oci_layout import write_image_info

TESTDATA = Path(__file__).parent / "testdata"
SUPPORTED_K8S = ("1.25.0", "1.37.0")  # oldest and newest: Indexed Jobs + pod hostnames exist in both
ENTRYPOINT = ["/usr/bin/python3.11", "-S", "/app/entrypoint.py", "mlenv/ml/homefeed/train.py"]

COMMON_FLAGS = ["--project", "homefeed", "--trainer", "ml/homefeed/train", "--repository",
                "registry.example.com/ml/homefeed", "--nodes", "2", "--nproc-per-node", "4",
                "--cpus-per-node", "8", "--memory-per-node", "32Gi", "--namespace", "training",
                "--service-account", "trainer", "--node-selector", "pool=cpu-large",
                "--toleration", "dedicated=ml:NoSchedule", "--env", "LOG_LEVEL=info",
                "--secret-env", "AWS_SECRET_ACCESS_KEY=s3-creds:secret", "--tracking-uri", "http://mlflow:5000"]
TRAINER_FLAGS = ["--", "--epochs", "3", "--run-name", "homefeed-k8s", "--set", "data_dir=/mnt/data"]

# ray.io/v1 RayJob / RayCluster fields (written from the KubeRay v1 API reference, not machine-read).
RAYJOB_SPEC_FIELDS = {"entrypoint", "runtimeEnvYAML", "metadata", "submissionMode", "shutdownAfterJobFinishes",
                      "ttlSecondsAfterFinished", "rayClusterSpec", "clusterSelector", "suspend", "jobId",
                      "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "activeDeadlineSeconds",
                      "backoffLimit", "submitterPodTemplate", "submitterConfig", "managedBy", "deletionStrategy"}
RAYCLUSTER_SPEC_FIELDS = {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
                          "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions"}
HEAD_GROUP_FIELDS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                       "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds"}

TRAINJOB_SPEC_FIELDS = {"runtimeRef", "trainer", "podSpecOverrides", "initializer", "labels", "annotations",
                        "managedBy", "suspend"}
TRAINJOB_TRAINER_FIELDS = {"image", "command", "args", "env", "numNodes", "numProcPerNode", "resourcesPerNode"}
TRAINJOB_OVERRIDE_FIELDS = {"targetJobs", "serviceAccountName", "nodeSelector", "tolerations", "volumes",
                            "initContainers", "containers", "schedulingGates", "affinity"}


@pytest.fixture
def image_info(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A minimal real OCI layout (config + manifest, no layers) and the info file :launch would pass."""
    return write_image_info(tmp_path, ENTRYPOINT, "launch_image_info.json", "//ml/homefeed:train_image")


def launch(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def dry_run(info: Path, flavor: str) -> str:
    code, out, err = launch("--on", "k8s", "--flavor", flavor, "--dry-run", "--image-info", str(info),
                            *COMMON_FLAGS, *TRAINER_FLAGS)
    assert code == 0, err
    return out


@pytest.mark.parametrize("flavor", ["job", "rayjob", "trainjob"])
def test_dry_run_matches_the_golden_file(image_info, flavor):
    out = dry_run(image_info[0], flavor)
    golden = TESTDATA / f"{flavor}.yaml"
    if os.environ.get("LAUNCH_GOLDEN_UPDATE"):
        (Path(os.environ["LAUNCH_GOLDEN_UPDATE"]) / golden.name).write_text(out)
    assert out == golden.read_text(), f"{golden.name} differs from the dry-run output; if intended, regenerate " \
                                      "(see this file's docstring)"


@pytest.mark.parametrize("version", SUPPORTED_K8S)
def test_job_flavour_is_valid_kubernetes_strictly(image_info, version):
    objects = list(yaml.safe_load_all(dry_run(image_info[0], "job")))
    assert [o["kind"] for o in objects] == ["Service", "Job"]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    # The validator really rejects what is wrong: an unknown field, a wrong type.
    bad = json.loads(json.dumps(objects[1]))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
    bad = json.loads(json.dumps(objects[1]))
    bad["spec"]["completions"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_job_flavour_wires_torchrun_rendezvous(image_info):
    service, job = yaml.safe_load_all(dry_run(image_info[0], "job"))
    pod = job["spec"]["template"]["spec"]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == pod["subdomain"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    command = pod["containers"][0]["command"]
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in command and "--nnodes=2" in command
    assert "--nproc-per-node=4" in command
    assert f"--master-addr=homefeed-train-0.{service['metadata']['name']}" in command
    # torchrun runs the image's own entrypoint as each rank, with the trainer flags unchanged.
    assert command[command.index("--no-python") + 1:] == ENTRYPOINT
    assert pod["containers"][0]["args"] == TRAINER_FLAGS[1:]


@pytest.mark.parametrize("version", SUPPORTED_K8S)
def test_trainjob_fields_and_its_core_parts_validate(image_info, version):
    (trainjob,) = yaml.safe_load_all(dry_run(image_info[0], "trainjob"))
    assert trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and trainjob["kind"] == "TrainJob"
    spec = trainjob["spec"]
    assert set(spec) <= TRAINJOB_SPEC_FIELDS
    assert set(spec["trainer"]) <= TRAINJOB_TRAINER_FIELDS
    for override in spec.get("podSpecOverrides", []):
        assert set(override) <= TRAINJOB_OVERRIDE_FIELDS
    trainer = spec["trainer"]
    overrides = {k: v for k, v in spec["podSpecOverrides"][0].items() if k != "targetJobs"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": trainjob["metadata"],
           "spec": {**overrides, "containers": [{"name": "node", "image": trainer["image"],
                                                 "command": trainer["command"], "args": trainer["args"],
                                                 "env": trainer["env"], "resources": trainer["resourcesPerNode"]}]}}
    kubernetes_validate.validate(pod, version, strict=True)
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4


@pytest.mark.parametrize("flavor", ["job", "rayjob", "trainjob"])
def test_every_image_is_pinned_to_the_layout_digest(image_info, flavor):
    info, digest = image_info
    text = dry_run(info, flavor)
    images = [line.split("image:", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("image:")]
    assert images and all(i == f"registry.example.com/ml/homefeed@{digest}" for i in images)


def test_image_python_path_matches_the_image_entrypoint(monkeypatch):
    for var in ("RUNFILES_DIR", "MLENV_WORKSPACE_NAME", "MLENV_SITE_PACKAGES"):
        monkeypatch.delenv(var, raising=False)  # as in the image: the entrypoint's defaults
    from tools.rules.private import image_entrypoint

    importlib.reload(image_entrypoint)
    assert common.IMAGE_PYTHONPATH.split(":") == image_entrypoint._paths()  # noqa: SLF001


def test_stale_digest_file_is_refused(image_info):
    info, _ = image_info
    (info.parent / "train_image.digest").write_text("sha256:" + "0" * 64 + "\n")
    code, _, err = launch("--on", "k8s", "--dry-run", "--image-info", str(info), *COMMON_FLAGS)
    assert code == 2 and "differs from its .digest" in err and "rebuild the image" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--repository", "registry.example.com/ml/homefeed:latest"], "without a tag or digest"),
    (["--flavor", "pytorchjob"], "unknown --flavor 'pytorchjob'"),
    (["--toleration", "dedicated=ml"], "KEY[=VALUE]:EFFECT"),
    (["--secret-env", "TOKEN=only-a-name"], "must be SECRET:KEY"),
    (["--name", "Homefeed_Train"], "not a valid Kubernetes name"),
])
def test_bad_k8s_input_fails_before_rendering(image_info, flags, message):
    code, out, err = launch("--on", "k8s", "--dry-run", "--image-info", str(image_info[0]), *COMMON_FLAGS, *flags)
    assert code == 2 and message in err and out == ""


def test_no_kube_context_fails_before_any_request(image_info, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    code, out, err = launch("--on", "k8s", "--image-info", str(image_info[0]), *COMMON_FLAGS)
    assert code == 2 and "no Kubernetes context" in err and "KUBECONFIG" in err
    # A kubeconfig without the asked-for context names the ones it has.
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    code, out, err = launch("--on", "k8s", "--context", "prod", "--image-info", str(image_info[0]), *COMMON_FLAGS)
    assert code == 2 and "no Kubernetes context prod" in err and "dev" in err


@pytest.mark.parametrize("version", SUPPORTED_K8S)
def test_rayjob_fields_and_its_pod_templates_validate(image_info, version):
    (rayjob,) = yaml.safe_load_all(dry_run(image_info[0], "rayjob"))
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["annotations"] == {"ray.io/overwrite-container-cmd": "true"}
    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS and set(spec["rayClusterSpec"]) <= RAYCLUSTER_SPEC_FIELDS
    head = spec["rayClusterSpec"]["headGroupSpec"]
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert set(head) <= HEAD_GROUP_FIELDS and set(workers) <= WORKER_GROUP_FIELDS
    assert all(isinstance(v, str) for v in {**head["rayStartParams"], **workers["rayStartParams"]}.values())
    # One worker pod per node, the head trains nothing; the operator submits over HTTP (no `ray` CLI needed).
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    assert head["rayStartParams"]["num-cpus"] == "0" and spec["submissionMode"] == "HTTPMode"
    # The job: the --on ray driver over the image's own main file, 2 x 4 Train workers, the trainer flags as given.
    entry = spec["entrypoint"].split()
    assert entry[:4] == [ENTRYPOINT[0], "-S", "-m", "tools.launch.ray.driver"]
    assert entry[entry.index("--main") + 1] == "/app/runfiles/" + ENTRYPOINT[3]
    assert entry[entry.index("--workers") + 1] == "8" and entry[entry.index("--cpus-per-worker") + 1] == "2"
    assert entry[entry.index("--") + 1:] == TRAINER_FLAGS[1:]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["PYTHONPATH"] == common.IMAGE_PYTHONPATH and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # Each pod template is a core PodTemplateSpec: validate it strictly as a v1 Pod.
    for group in (head, workers):
        template = group["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]},
               "spec": template["spec"]}
        kubernetes_validate.validate(pod, version, strict=True)
        command = template["spec"]["containers"][0]["command"]
        assert command[:2] == ["/bin/sh", "-c"] and '"$KUBERAY_GEN_RAY_START_CMD"' in command[2]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "8"
