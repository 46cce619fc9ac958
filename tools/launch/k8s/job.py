"""`--flavor job`: core kinds only, so it runs on any cluster.

An Indexed `batch/v1` Job starts one pod per node (completion index = node rank) and a headless Service
gives pod 0 a stable DNS name (`<job>-0.<job>`) for torchrun's static rendezvous. Nothing is retried
(`backoffLimit: 0`): a resume is an explicit relaunch with `--resume`, as on a laptop.
"""

from __future__ import annotations

from tools.launch.image import ImageRef
from tools.launch.k8s import common
from tools.launch.spec import LaunchSpec


def render(spec: LaunchSpec, image: ImageRef) -> list[dict]:
    name = spec.job_name()
    selector = {"mlenv.dev/job": name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(spec),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            # Ranks look each other up before they are Ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": common.RDZV_PORT, "targetPort": common.RDZV_PORT}],
        },
    }
    flags = [f"--nnodes={spec.nodes}", f"--nproc-per-node={spec.nproc_per_node}",
             "--node-rank=$(JOB_COMPLETION_INDEX)", f"--master-addr={name}-0.{name}",
             f"--master-port={common.RDZV_PORT}", "--max-restarts=0"]
    container = {
        "name": common.CONTAINER,
        "image": image.reference,
        "command": common.torchrun_command(image, flags),
        "args": list(spec.trainer_args),
        "env": common.env(spec),
        "ports": [{"name": "rendezvous", "containerPort": common.RDZV_PORT}],
    }
    res = common.resources(spec)
    if res:
        container["resources"] = res
    pod_spec = {"subdomain": name, "restartPolicy": "Never", **common.pod_extras(spec), "containers": [container]}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": common.metadata(spec),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
            "backoffLimit": 0,
            "template": {"metadata": {"labels": common.labels(spec)}, "spec": pod_spec},
        },
    }
    return [service, job]
