"""`sweep --on k8s`: the sweep's workers as one Indexed Job (completions = parallelism = --parallel).

Each pod runs `sweep --worker` from the project's train image, pinned by digest (tools/launch/image.py):
the image carries the sweep's code next to the trainer (the project's `:sweep` is one of the ml_image's
`tools`; `:sweep_k8s` is the same sweep plus the image's digest, tools/rules/private/sweep.bzl), and every
trial runs the trainer exactly as the image's own Entrypoint does (`--trainer-command`). The space file
travels in a ConfigMap, so any `--space` works without rebuilding the image. The storage URL, password
included, comes from a Secret key (`--storage-secret SECRET:KEY` -> env MLENV_SWEEP_STORAGE, read by
`--storage env:MLENV_SWEEP_STORAGE`); the manifests never hold it. Pods log to `--tracking-uri`, an MLflow server they reach.

The prepare and report steps run where the user runs the command (they need the same storage, reached from
there with `--storage`): prepare, create the ConfigMap and Job, follow them (tools/launch/k8s/submit.py),
then report. `--dry-run` prints the manifests and touches nothing. Workers are idempotent: the Job is not
retried (`backoffLimit: 0`); rerunning the command after a failure resumes the study with a new Job.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from tools.sweep import worker as worker_mod

__all__ = ["K8sError", "STORAGE_ENV", "check_request", "job_name", "main", "render"]

STORAGE_ENV = "MLENV_SWEEP_STORAGE"
SPACE_MOUNT = "/etc/mlenv-sweep"
CONTAINER = "sweep-worker"
# Where the worker finds the sweep's main file in the image (ml_sweep's main, under the runfiles root).
SWEEP_MAIN = "mlenv/tools/sweep/sweep.py"
OUT_DIR = "/tmp/mlenv-sweep"  # noqa: S108 - in the pod's own filesystem; per pod: trial run folders; results live in the storage and MLflow


class K8sError(RuntimeError):
    """A wrong `--on k8s` request; the sweep prints it and exits 2."""


def _label(text: str, limit: int = 63) -> str:
    """A DNS-1123 label from `text` (lowercase alphanumerics and dashes, at most `limit` characters)."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "sweep"


def job_name(args: argparse.Namespace) -> str:
    """--name, else <study>-sweep-<time>; at most 52 characters (Indexed Job pod names add a suffix)."""
    if args.name:
        if _label(args.name, 52) != args.name:
            raise K8sError(f"--name {args.name!r}: a Job name must be lowercase letters, digits and dashes, "
                           "at most 52 characters")
        return args.name
    suffix = "-sweep-" + _dt.datetime.now().strftime("%m%d%H%M%S")
    return _label(args.study, 52 - len(suffix)) + suffix


def check_request(args: argparse.Namespace) -> tuple[str, str]:
    """Refusals before anything is read or started; returns (secret, key)."""
    missing = [flag for flag, value in (("--repository", args.repository), ("--storage-secret", args.storage_secret),
                                         ("--tracking-uri", args.tracking_uri)) if not value]
    if missing:
        raise K8sError(f"--on k8s needs {', '.join(missing)}: the registry the train image was pushed to "
                       "(REGISTRY/NAME), the Secret key with the storage URL (SECRET:KEY; e.g. kubectl create secret "
                       "generic sweep-db --from-literal=url=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB) and "
                       "an MLflow server the pods reach (http://HOST:5000)")
    secret, sep, key = args.storage_secret.partition(":")
    if not sep or not secret or not key:
        raise K8sError(f"--storage-secret {args.storage_secret!r}: expected SECRET:KEY (a Secret in the Job's "
                       "namespace and the key holding the storage URL)")
    if args.tracking_uri.startswith(("sqlite", "file:", "/")):
        raise K8sError(f"--tracking-uri {args.tracking_uri}: pods cannot write to a file on this machine; give an "
                       "MLflow server they reach (http://HOST:5000)")
    if args.image_info is None:
        raise K8sError("this sweep target has no train image: give the project's ml_sweep "
                       "image = \":train_image\", list \":sweep\" in its ml_image's tools, and run "
                       "//<project>:sweep_k8s -- --on k8s (docs/sweeps.md)")
    return secret, key


def render(args: argparse.Namespace, image: Any, space_text: str, secret: str, key: str, name: str) -> list[dict]:
    """The ConfigMap (space file) and the Indexed Job of `--parallel` worker pods."""
    labels = {"app.kubernetes.io/name": _label(args.project), "app.kubernetes.io/managed-by": "mlenv-sweep",
              "mlenv.dev/job": name, "mlenv.dev/sweep-study": _label(args.study)}
    meta = {"name": name, "labels": labels}
    if args.namespace:
        meta["namespace"] = args.namespace
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**meta, "labels": dict(labels)},
                 "data": {"space.yaml": space_text}}
    python, _site_flag, entrypoint_py = image.entrypoint[0], image.entrypoint[1], image.entrypoint[2]
    worker_args = ["--worker", "--worker-index", "$(JOB_COMPLETION_INDEX)", "--space", f"{SPACE_MOUNT}/space.yaml",
                   "--trials", str(args.trials), "--storage", f"env:{STORAGE_ENV}", "--study", args.study,
                   "--out", OUT_DIR, "--max-failures", str(args.max_failures), "--heartbeat", str(args.heartbeat),
                   "--trial-timeout", f"{args.trial_timeout:g}", "--trainer-command", json.dumps(list(image.entrypoint)),
                   "--config-class", args.config_class, "--project", args.project]
    for item in args.sets:
        worker_args += ["--set", item]
    env = [{"name": "MLFLOW_TRACKING_URI", "value": args.tracking_uri},
           {"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": worker_mod.JOB_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": STORAGE_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]
    container = {"name": CONTAINER, "image": image.reference,
                 "command": [python, "-S", entrypoint_py, SWEEP_MAIN], "args": worker_args, "env": env,
                 "volumeMounts": [{"name": "space", "mountPath": SPACE_MOUNT, "readOnly": True}]}
    requests = {"cpu": f"{args.cpus_per_worker:g}"}
    if args.memory_per_worker:
        requests["memory"] = args.memory_per_worker
    container["resources"] = {"requests": requests, "limits": dict(requests)}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": {"completionMode": "Indexed", "completions": args.parallel, "parallelism": args.parallel,
                    "backoffLimit": 0,
                    "template": {"metadata": {"labels": dict(labels)},
                                 "spec": {"restartPolicy": "Never", "containers": [container],
                                          "volumes": [{"name": "space", "configMap": {"name": name}}]}}}}
    return [configmap, job]


def main(args: argparse.Namespace, prepare_and_report: Any) -> int:
    """Renders (and unless --dry-run: prepares, applies, follows, reports). `prepare_and_report(run_workers)`
    is the sweep's own prepare -> workers -> report sequence with `run_workers` as the middle step."""
    from tools.launch import image as image_mod
    from tools.launch.k8s import common
    from tools.launch.spec import LaunchError

    secret, key = check_request(args)
    try:
        image = image_mod.from_info(Path(args.image_info), args.repository)
    except LaunchError as exc:
        raise K8sError(str(exc)) from None
    if len(image.entrypoint) < 4:
        raise K8sError(f"the train image's Entrypoint {list(image.entrypoint)} is not ml_image's "
                       "[python, -S, entrypoint.py, main]; rebuild it with ml_image")
    space_text = Path(args.space).read_text()
    objects = render(args, image, space_text, secret, key, job_name(args))
    if args.dry_run:
        sys.stdout.write(common.to_yaml(objects))
        return 0

    def run_workers() -> None:
        from tools.launch.k8s import submit

        try:
            api, namespace, client_mod = submit.load_context(args.context)
            if not args.skip_push_check:
                image_mod.check_pushed(image)
            submit.apply(api, objects, args.namespace or namespace)
            code = submit.follow(api, client_mod, objects, objects[1]["metadata"]["name"],
                                 args.namespace or namespace, detach=False)
        except LaunchError as exc:
            raise K8sError(str(exc)) from None
        if code:
            raise K8sError(f"sweep worker pods ended with exit code {code}; rerun the same command to resume the "
                           "study")

    return prepare_and_report(run_workers)
