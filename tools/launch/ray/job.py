"""The Ray job a launch becomes: the driver's command line, its runtime_env and the Train scaling.

How the code reaches the job (docs/launch.md, "--on ray"):
- `runfiles`: the cluster runs on this machine (`--address local`, or a loopback address): the driver and
  every worker run the launcher's own interpreter on the launcher's runfiles (PYTHONPATH), so a job runs
  exactly the bytes `bazel run` built, with nothing uploaded.
- `image`: a remote cluster whose nodes run the project's train image (e.g. a KubeRay RayCluster from
  `--on k8s --flavor rayjob`): the driver and workers use the image's interpreter, its runfiles root and
  locked environment (the paths the image's own entrypoint uses). The launcher cannot see which image a
  remote cluster runs; the job's metadata records the digest it expects.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field

from tools.launch.spec import LaunchError, LaunchSpec

__all__ = ["Code", "JobSpec", "build", "default_cpus_per_worker"]

# What each Train worker asks of Ray when --cpus-per-node is not given: a fraction, so Ray Data tasks (and
# the Train controller) still find a CPU when workers fill a node (Ray Data deadlocks otherwise).
DEFAULT_CPUS_PER_WORKER = 0.5


@dataclass(frozen=True)
class Code:
    """Where the job finds the interpreter, the import path and the trainer's main file."""

    mode: str  # runfiles | image
    python: str
    pythonpath: str
    main: str  # the trainer's main file, absolute on the nodes
    image: str | None = None  # REGISTRY/NAME@sha256:..., image mode only

    @classmethod
    def from_runfiles(cls, main: str) -> Code:
        pythonpath = os.environ.get("PYTHONPATH") or os.pathsep.join(p for p in sys.path if p)
        return cls("runfiles", sys.executable, pythonpath, os.path.abspath(main))

    @classmethod
    def from_image(cls, image) -> Code:
        from tools.launch.k8s.common import IMAGE_PYTHONPATH

        # The image's runfiles root (/app/runfiles), as the entrypoint's defaults have it in the container.
        runfiles = os.path.dirname(IMAGE_PYTHONPATH.split(":")[0])

        # The image's Entrypoint is [python, -S, /app/entrypoint.py, <main relative to the runfiles root>].
        if len(image.entrypoint) < 4:
            raise LaunchError(f"the train image's Entrypoint {list(image.entrypoint)} is not ml_image's "
                              "[python, -S, entrypoint.py, main]; rebuild it with ml_image")
        return cls("image", image.entrypoint[0], IMAGE_PYTHONPATH, f"{runfiles}/{image.entrypoint[3]}",
                   image.reference)


@dataclass
class JobSpec:
    """What is submitted: JobSubmissionClient.submit_job(entrypoint=..., runtime_env=..., metadata=...)."""

    entrypoint: str
    runtime_env: dict
    metadata: dict[str, str]
    scaling: dict = field(default_factory=dict)  # for the dry run; the driver's flags carry it

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def default_cpus_per_worker(spec: LaunchSpec) -> float:
    if spec.cpus_per_node is not None:
        return spec.cpus_per_node / spec.nproc_per_node
    return DEFAULT_CPUS_PER_WORKER


def build(spec: LaunchSpec, code: Code, *, storage: str | None = None, passthrough_env: dict[str, str] | None = None,
          datasets: str | None = None) -> JobSpec:
    """The job for `spec` (trainer_args already pinned to one run name)."""
    cpus = default_cpus_per_worker(spec)
    gpus = 1 if spec.gpus_per_node else 0
    scaling = {"num_workers": spec.world_size, "use_gpu": bool(gpus),
               "resources_per_worker": {"CPU": cpus, **({"GPU": gpus} if gpus else {})},
               "placement_strategy": "SPREAD" if spec.nodes > 1 else "PACK",
               "backend": "nccl" if gpus else "gloo"}
    driver = [code.python, "-S", "-m", "tools.launch.ray.driver", "--main", code.main,
              "--workers", str(spec.world_size), "--cpus-per-worker", f"{cpus:g}", "--gpus-per-worker", str(gpus),
              "--placement", scaling["placement_strategy"], "--backend", scaling["backend"]]
    if storage:
        driver += ["--storage", storage]
    if code.mode == "runfiles":
        driver += ["--cwd", os.getcwd()]
    if datasets:
        driver += ["--datasets", datasets]
    # RAY_TRAIN_ENABLE_PRINT_PATCH=0: the trainer's prints reach the job log once, not once per log handler.
    env = {**(passthrough_env or {}), **spec.env, "PYTHONPATH": code.pythonpath, "PYTHONUNBUFFERED": "1",
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if spec.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = spec.tracking_uri
    metadata = {"mlenv.project": spec.project, "mlenv.code": code.mode}
    if code.image:
        metadata["mlenv.image"] = code.image
    return JobSpec(entrypoint=shlex.join([*driver, "--", *spec.trainer_args]),
                   runtime_env={"env_vars": dict(sorted(env.items()))}, metadata=metadata, scaling=scaling)
