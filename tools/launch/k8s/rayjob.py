"""`--flavor rayjob`: a KubeRay `RayJob` (ray.io/v1): a Ray cluster from the train image, the job, then teardown.

The RayCluster's head and worker pods run the project's train image (by digest), so the job is the same
driver `--on ray` submits (tools/launch/ray/driver.py over the image's main file, image mode of
tools/launch/ray/job.py). The image has no `ray` console script on PATH, so the pods run KubeRay's own
generated `ray start ...` command (`KUBERAY_GEN_RAY_START_CMD`, with the `ray.io/overwrite-container-cmd`
annotation) through the image's interpreter. The job is submitted over HTTP by the operator
(`submissionMode: HTTPMode`): KubeRay's default submitter pod would run `ray job submit`, which the image does
not have. One worker pod per node (the head takes no training: `num-cpus: "0"`), the cluster is deleted
when the job ends, and nothing is retried: a resume is an explicit relaunch with `--resume`.
"""

from __future__ import annotations

from importlib import metadata

import yaml

from tools.launch.image import ImageRef
from tools.launch.k8s import common
from tools.launch.ray import job as ray_job
from tools.launch.spec import LaunchSpec

__all__ = ["render", "START_COMMAND"]

# `ray` as a shell function over the image's interpreter, then KubeRay's generated start command as is.
START_COMMAND = ("ulimit -n 65536; ray() {{ exec {python} -S -c \"import sys; from ray.scripts.scripts import main; "
                 "sys.argv[0] = 'ray'; sys.exit(main())\" \"$@\"; }}; eval \"$KUBERAY_GEN_RAY_START_CMD\"")
HEAD_PORTS = [("gcs", 6379), ("dashboard", 8265), ("client", 10001)]


def _ray_version() -> str:
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "2.60.0"


def _pod(spec: LaunchSpec, image: ImageRef, container_name: str, *, head: bool) -> dict:
    container = {
        "name": container_name,
        "image": image.reference,
        "command": ["/bin/sh", "-c", START_COMMAND.format(python=image.entrypoint[0])],
        "env": common.env(spec),
    }
    if head:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in HEAD_PORTS]
    else:
        res = common.resources(spec)
        if res:
            container["resources"] = res
    return {"metadata": {"labels": common.labels(spec)},
            "spec": {"restartPolicy": "Never", **common.pod_extras(spec), "containers": [container]}}


def render(spec: LaunchSpec, image: ImageRef) -> list[dict]:
    job = ray_job.build(spec, ray_job.Code.from_image(image))
    workers = {
        "groupName": "workers",
        "replicas": spec.nodes,
        "minReplicas": spec.nodes,
        "maxReplicas": spec.nodes,
        "rayStartParams": {},
        "template": _pod(spec, image, "ray-worker", head=False),
    }
    meta = common.metadata(spec)
    meta["annotations"] = {"ray.io/overwrite-container-cmd": "true"}
    body = {
        "entrypoint": job.entrypoint,
        "runtimeEnvYAML": yaml.safe_dump(job.runtime_env, sort_keys=True),
        "metadata": job.metadata,
        "submissionMode": "HTTPMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 300,
        "rayClusterSpec": {
            "rayVersion": _ray_version(),
            "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # noqa: S104 - the pod's interface, reached through its Service
                              "template": _pod(spec, image, "ray-head", head=True)},
            "workerGroupSpecs": [workers],
        },
    }
    return [{"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": body}]
