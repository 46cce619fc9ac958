"""`--flavor trainjob`: a Kubeflow Trainer (v2) `TrainJob` on the `torch-distributed` runtime.

The runtime creates the pods, the headless service and the PET_* variables (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT) that torchrun reads as its defaults,
so the command is the same torchrun-over-the-entrypoint as the job flavour without rendezvous flags.
Field names follow trainer.kubeflow.org/v1alpha1 (Kubeflow Trainer 2.0).
"""

from __future__ import annotations

from tools.launch.image import ImageRef
from tools.launch.k8s import common
from tools.launch.spec import LaunchSpec

RUNTIME = "torch-distributed"


def render(spec: LaunchSpec, image: ImageRef) -> list[dict]:
    trainer = {
        "image": image.reference,
        "command": common.torchrun_command(image, ["--max-restarts=0"]),
        "args": list(spec.trainer_args),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.nproc_per_node,
        "env": common.env(spec),
    }
    res = common.resources(spec)
    if res:
        trainer["resourcesPerNode"] = res
    body = {
        "runtimeRef": {"name": RUNTIME, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
        "trainer": trainer,
    }
    extras = common.pod_extras(spec)
    if extras:
        body["podSpecOverrides"] = [{"targetJobs": [{"name": "node"}], **extras}]
    return [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": common.metadata(spec),
             "spec": body}]
