"""What a launch is, independent of where it runs, and the checks every target shares.

The command line (cli.py) and the per-project defaults file both become one `LaunchSpec`; each target then
turns it into processes (local), a Ray job (ray) or manifests (k8s). Every check here runs before anything
starts or is submitted, and every failure names what was wrong and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LaunchError", "LaunchSpec", "TARGETS", "FLAVORS", "load_defaults", "lock_variant"]

TARGETS = ("local", "ray", "k8s")
FLAVORS = ("job", "rayjob", "trainjob")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class LaunchError(Exception):
    """A launch refused before anything ran or was submitted; the message says what and the fix."""


@dataclass
class LaunchSpec:
    """One launch: where, how many processes, which resources, and the trainer's own flags."""

    on: str
    project: str
    trainer_args: list[str] = field(default_factory=list)
    nodes: int = 1
    nproc_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_node: float | None = None
    memory_per_node: str | None = None
    dry_run: bool = False
    detach: bool = False
    # k8s
    flavor: str = "job"
    name: str | None = None
    namespace: str | None = None
    repository: str | None = None
    service_account: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)  # NAME -> secret:key
    tracking_uri: str | None = None
    # ray
    address: str | None = None
    ray_datasets: str | None = None  # MODULE:FUNCTION, the optional Ray Data input (tools/launch/ray/driver.py)
    # the trainer's declared limit (from the :launch macro), 0 = none declared
    max_processes: int = 0

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    def validate(self, *, variant: str, cpu_count: int | None = None) -> None:
        """Checks every input that does not need the network; `variant` is the locked environment's (cpu/cuda)."""
        if self.on not in TARGETS:
            raise LaunchError(f"unknown --on {self.on!r}: choose one of {', '.join(TARGETS)}")
        for key in ("nodes", "nproc_per_node"):
            if getattr(self, key) < 1:
                raise LaunchError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if self.gpus_per_node < 0:
            raise LaunchError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.gpus_per_node and variant != "cuda":
            raise LaunchError(
                f"--gpus-per-node {self.gpus_per_node} asks for GPUs, but this build uses the {variant} lock "
                "(its torch has no CUDA); rebuild with --config=cuda "
                "(tools/bazel run --config=cuda //...:launch -- ...) or drop --gpus-per-node")
        if self.gpus_per_node and self.nproc_per_node > self.gpus_per_node:
            raise LaunchError(
                f"--nproc-per-node {self.nproc_per_node} > --gpus-per-node {self.gpus_per_node}: each process "
                f"drives one GPU; use --nproc-per-node {self.gpus_per_node} or ask for more GPUs")
        if self.max_processes and self.world_size > self.max_processes:
            raise LaunchError(
                f"{self.nodes} node(s) x {self.nproc_per_node} process(es) = {self.world_size} processes, but "
                f"this trainer supports at most {self.max_processes} (max_processes of its :launch target); "
                "use fewer --nodes/--nproc-per-node")
        if self.cpus_per_node is not None and self.cpus_per_node <= 0:
            raise LaunchError(f"--cpus-per-node must be > 0, got {self.cpus_per_node}")
        if self.on == "local":
            if self.nodes != 1:
                raise LaunchError(f"--on local runs on this machine only: --nodes must be 1, got {self.nodes}; "
                                  "use --on ray or --on k8s for several nodes")
            cpus = cpu_count or os.cpu_count() or 1
            if not self.gpus_per_node and self.nproc_per_node > cpus:
                raise LaunchError(
                    f"--nproc-per-node {self.nproc_per_node} CPU processes on a machine with {cpus} CPUs would "
                    f"oversubscribe it; use --nproc-per-node <= {cpus}")
        if self.on != "k8s" and self.flavor != "job":
            raise LaunchError(f"--flavor {self.flavor} only applies to --on k8s")
        if self.flavor not in FLAVORS:
            raise LaunchError(f"unknown --flavor {self.flavor!r}: choose one of {', '.join(FLAVORS)}")
        if self.on == "k8s":
            if not self.repository:
                raise LaunchError("--on k8s needs --repository REGISTRY/NAME (where `:train_image.push` pushed "
                                  "the image); the manifests pin REGISTRY/NAME@sha256:<the image's digest>")
            if "@" in self.repository or ":" in self.repository.rsplit("/", 1)[-1]:
                raise LaunchError(f"--repository {self.repository!r} must be REGISTRY/NAME without a tag or "
                                  "digest: the launcher always pins the image built by Bazel by its digest")
            name = self.job_name()
            if not _DNS_LABEL.match(name) or len(name) > 50:
                raise LaunchError(f"job name {name!r} is not a valid Kubernetes name (lowercase letters, digits "
                                  "and '-', at most 50 characters); pass --name")
        for secret in self.secret_env.values():
            if ":" not in secret:
                raise LaunchError(f"--secret-env value {secret!r} must be SECRET:KEY")
        if self.on == "ray" and not self.address:
            raise LaunchError("--on ray needs --address http://HOST:8265 (a running cluster's dashboard) or "
                              "--address local (a throwaway cluster on this machine)")
        if self.on == "ray" and self.secret_env:
            raise LaunchError("--secret-env is for --on k8s (secretKeyRef); on Ray, give the cluster's nodes the "
                              "secret (their environment) or pass a plain --env")
        if self.on == "ray" and self.address == "local":
            cpus = cpu_count or os.cpu_count() or 1
            if self.nodes > cpus:
                raise LaunchError(f"--address local with --nodes {self.nodes}: one Ray node per --nodes on a "
                                  f"machine with {cpus} CPUs; use --nodes <= {cpus}")
        if self.ray_datasets and (self.on != "ray" or ":" not in self.ray_datasets):
            raise LaunchError(f"--ray-datasets {self.ray_datasets!r}: expects MODULE:FUNCTION and --on ray")

    def job_name(self) -> str:
        return self.name or f"{self.project}-train".lower().replace("_", "-")


_DEFAULT_KEYS = {f.name for f in dataclasses.fields(LaunchSpec)} - {"on", "project", "trainer_args", "dry_run"}


def load_defaults(path: Path) -> dict:
    """The per-project defaults file: a JSON object whose keys are LaunchSpec fields (flags override them)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot read the launch defaults file {path}: {exc}; fix or remove it") from exc
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: expected a JSON object of launch settings")
    unknown = sorted(set(data) - _DEFAULT_KEYS)
    if unknown:
        raise LaunchError(f"{path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(_DEFAULT_KEYS))}")
    return data


def lock_variant() -> str:
    """cpu or cuda: which lock the launcher (and so the trainer next to it) was built with."""
    from toolchains.cuda import gate

    return gate.variant_of_environment()
