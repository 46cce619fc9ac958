"""Pieces shared by every Kubernetes flavour: labels, env, resources and the torchrun command in the image.

The container runs torchrun's agent from the image's own environment with `--no-python` and the image's
Entrypoint as the program, so each rank starts exactly as `docker run IMAGE <trainer flags>` would, with the
torchrun variables set. `python -S` keeps the OS's site-packages out; PYTHONPATH gives the agent the same
paths tools/rules/private/image_entrypoint.py gives the trainer.
"""

from __future__ import annotations

import yaml

from tools.launch.image import ImageRef
from tools.launch.spec import LaunchSpec

__all__ = ["IMAGE_PYTHONPATH", "RDZV_PORT", "labels", "env", "resources", "pod_extras", "torchrun_command", "to_yaml"]

# image_entrypoint.py's _paths(): the app's runfiles root, then the locked environment.
IMAGE_PYTHONPATH = "/app/runfiles/mlenv:/opt/mlenv/site-packages"
RDZV_PORT = 29500
CONTAINER = "trainer"


def labels(spec: LaunchSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.project, "app.kubernetes.io/managed-by": "mlenv-launch",
            "mlenv.dev/job": spec.job_name()}


def env(spec: LaunchSpec) -> list[dict]:
    """Plain values, then secret references, each sorted by name (stable golden files)."""
    values = dict(spec.env)
    values["PYTHONPATH"] = IMAGE_PYTHONPATH
    if spec.tracking_uri:
        values["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    out = [{"name": k, "value": v} for k, v in sorted(values.items())]
    for name, ref in sorted(spec.secret_env.items()):
        secret, key = ref.split(":", 1)
        out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return out


def resources(spec: LaunchSpec) -> dict:
    amounts: dict[str, str] = {}
    if spec.cpus_per_node is not None:
        amounts["cpu"] = f"{spec.cpus_per_node:g}"
    if spec.memory_per_node:
        amounts["memory"] = spec.memory_per_node
    limits = dict(amounts)
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    out = {}
    if amounts:
        out["requests"] = amounts
    if limits:
        out["limits"] = limits
    return out


def pod_extras(spec: LaunchSpec) -> dict:
    """Scheduling fields of a pod spec: service account, node selector, tolerations."""
    out: dict = {}
    if spec.service_account:
        out["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        out["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    return out


def torchrun_command(image: ImageRef, torchrun_flags: list[str]) -> list[str]:
    """python -S -m torch.distributed.run FLAGS --no-python <the image's entrypoint>."""
    python = image.entrypoint[0]
    return [python, "-S", "-m", "torch.distributed.run", *torchrun_flags, "--no-python", *image.entrypoint]


def metadata(spec: LaunchSpec, name: str | None = None) -> dict:
    meta = {"name": name or spec.job_name(), "labels": labels(spec)}
    if spec.namespace:
        meta["namespace"] = spec.namespace
    return meta


def to_yaml(objects: list[dict]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=120)
