"""`--on ray`: from a checked LaunchSpec to a submitted, followed Ray job (on a running or a throwaway cluster).

Order: the address is normalised, the code's location decided (runfiles for a cluster on this machine,
the train image otherwise; job.py), the job built; `--dry-run` prints it and stops. A running cluster's
address must answer (bounded) before the submit. `--address local` starts a LocalCluster (in a private
network namespace when root), submits to it, follows the job and always tears the cluster down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import urllib.parse
from pathlib import Path

from tools.launch.ray import cluster, submit
from tools.launch.ray import job as job_mod
from tools.launch.spec import LaunchError, LaunchSpec

__all__ = ["run", "LOCAL_NODES"]

# --address local: a head and one worker node (more when --nodes asks for more).
LOCAL_NODES = 2
# The launcher's environment the job inherits when it runs this machine's runfiles.
_PASSTHROUGH = ("MLFLOW_TRACKING_URI", "BUILD_WORKSPACE_DIRECTORY", "TEST_TMPDIR")


def _is_this_machine(address: str) -> bool:
    host = urllib.parse.urlparse(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _code(spec: LaunchSpec, address: str | None, trainer_main: Path | None, image_info: Path | None) -> job_mod.Code:
    if address is None or _is_this_machine(address):
        if trainer_main is None:
            raise LaunchError(f"project {spec.project}: its :launch target does not know the trainer's main file; "
                              "set trainer_main = \"<package>/<file>.py\" in its ml_launch")
        return job_mod.Code.from_runfiles(str(trainer_main))
    if image_info is None:
        raise LaunchError(f"--address {address} is another machine: its Ray nodes must run this project's train "
                          "image, and project {spec.project} has none; give its :launch target an ml_image "
                          "(image = \":train_image\"), or run Ray on this machine (--address local)")
    from tools.launch import image as image_mod

    return job_mod.Code.from_image(image_mod.from_info(image_info, spec.repository or spec.project))


def _passthrough(code: job_mod.Code) -> dict[str, str]:
    if code.mode != "runfiles":
        return {}
    return {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}


def run(spec: LaunchSpec, *, trainer_main: Path | None, image_info: Path | None) -> int:
    local = spec.address == "local"
    address = None if local else submit.normalize_address(spec.address)
    code = _code(spec, address, trainer_main, image_info)
    if local and spec.detach:
        raise LaunchError("--detach with --address local: the throwaway cluster ends with the launcher; start a "
                          "cluster that outlives it (ray start --head) and pass its --address")
    if spec.dry_run:
        job = job_mod.build(spec, code, storage="LOCAL_CLUSTER_TEMP_DIR/train" if local else None,
                            passthrough_env=_passthrough(code), datasets=spec.ray_datasets)
        where = {"address": spec.address if local else address, **({"local_cluster_nodes": max(LOCAL_NODES, spec.nodes)}
                                                                   if local else {})}
        print(json.dumps({**where, **json.loads(job.to_json())}, indent=2, sort_keys=True))
        return 0
    try:
        if not local:
            submit.check_address(address)
            job = job_mod.build(spec, code, passthrough_env=_passthrough(code), datasets=spec.ray_datasets)
            client, job_id = submit.submit(address, job)
            return submit.follow(client, address, job_id, detach=spec.detach)
        cluster.isolate()
        per_worker = job_mod.default_cpus_per_worker(spec)
        with cluster.LocalCluster(nodes=max(LOCAL_NODES, spec.nodes), cpus_per_node=spec.nproc_per_node * per_worker,
                                  gpus_per_node=spec.gpus_per_node) as local_cluster:
            job = job_mod.build(spec, code, storage=str(local_cluster.temp_dir / "train"),
                                passthrough_env=_passthrough(code), datasets=spec.ray_datasets)
            client, job_id = submit.submit(local_cluster.address, job)
            # The cluster ends with the launcher, so an interrupted follow stops the job without asking.
            return submit.follow(client, local_cluster.address, job_id, detach=False, ask=lambda _prompt: "y")
    except KeyboardInterrupt:
        print("launch: interrupted", file=sys.stderr)
        return 130
