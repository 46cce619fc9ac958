"""`tools/bazel run //ml/<project>:launch -- --on local|ray|k8s [options] -- <trainer flags>`.

The :launch target (tools/rules/launch.bzl) passes --project, --trainer (the trainer binary) and, when the
project has one, --image-info (where its ml_image train layout and digest lie). Everything is checked before anything runs or
is submitted; `--dry-run` prints what would run (the torchrun command, the manifests) and stops.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
from pathlib import Path

from tools.launch import spec as spec_mod
from tools.launch.spec import LaunchError, LaunchSpec

__all__ = ["main", "parse"]


def _pairs(values: list[str], flag: str, sep: str = "=") -> dict[str, str]:
    out = {}
    for item in values:
        key, ok, value = item.partition(sep)
        if not ok or not key:
            raise LaunchError(f"{flag} {item!r}: expected KEY{sep}VALUE")
        out[key] = value
    return out


def _toleration(text: str) -> dict[str, str]:
    """KEY[=VALUE]:EFFECT, as `kubectl taint` writes a taint."""
    head, ok, effect = text.rpartition(":")
    if not ok or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not head:
        raise LaunchError(f"--toleration {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT one of NoSchedule, "
                          "PreferNoSchedule, NoExecute")
    key, has_value, value = head.partition("=")
    out = {"key": key, "operator": "Equal" if has_value else "Exists"}
    if has_value:
        out["value"] = value
    out["effect"] = effect
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch", description=__doc__.split("\n\n")[0],
                                usage="launch --on local|ray|k8s [options] -- <trainer flags>")
    p.add_argument("--on", required=True, help="where to run: local, ray or k8s")
    p.add_argument("--nodes", type=int, help="machines (ray/k8s; local is 1)")
    p.add_argument("--nproc-per-node", type=int, help="training processes per machine (one per GPU on GPUs)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per machine (needs the CUDA lock: --config=cuda)")
    p.add_argument("--cpus-per-node", type=float, help="CPU request per machine (k8s)")
    p.add_argument("--memory-per-node", help="memory request per machine, e.g. 16Gi (k8s)")
    p.add_argument("--dry-run", action="store_true", help="print what would run or be submitted; run nothing")
    p.add_argument("--detach", action="store_true", help="submit and return without following the job")
    p.add_argument("--defaults", type=Path, help="JSON file of defaults for these flags (flags win)")
    k8s = p.add_argument_group("--on k8s")
    k8s.add_argument("--flavor", help="job (default: Indexed Job + headless Service) or trainjob (Kubeflow)")
    k8s.add_argument("--name", help="job name (default: <project>-train)")
    k8s.add_argument("--namespace", help="namespace (default: the context's)")
    k8s.add_argument("--context", help="kube context (default: the current one)")
    k8s.add_argument("--repository", help="REGISTRY/NAME the train image was pushed to (pinned by digest)")
    k8s.add_argument("--skip-push-check", action="store_true",
                     help="do not ask the registry whether the digest is there (e.g. no access from here)")
    k8s.add_argument("--service-account")
    k8s.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
    k8s.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT")
    k8s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    k8s.add_argument("--secret-env", action="append", default=[], metavar="NAME=SECRET:KEY")
    k8s.add_argument("--tracking-uri", help="MLFLOW_TRACKING_URI for the job")
    ray = p.add_argument_group("--on ray")
    ray.add_argument("--address", help="a running cluster's dashboard (http://HOST:8265) or `local` (a throwaway "
                     "cluster on this machine: a head and worker nodes)")
    ray.add_argument("--ray-datasets", metavar="MODULE:FUNCTION",
                     help="optional Ray Data input: FUNCTION(trainer_args) -> {name: ray.data.Dataset}, passed to "
                     "TorchTrainer(datasets=...); workers read ray.train.get_dataset_shard(name)")
    hidden = p.add_argument_group("set by the :launch target")
    hidden.add_argument("--project", required=True, help=argparse.SUPPRESS)
    hidden.add_argument("--trainer", required=True, type=Path, help=argparse.SUPPRESS)
    hidden.add_argument("--image-info", type=Path, help=argparse.SUPPRESS)
    hidden.add_argument("--trainer-main", type=Path, help=argparse.SUPPRESS)
    hidden.add_argument("--max-processes", type=int, default=0, help=argparse.SUPPRESS)
    return p


def parse(argv: list[str]) -> tuple[LaunchSpec, argparse.Namespace]:
    """(spec, the raw options) from the launcher's command line; trainer flags come after `--`."""
    if "--" in argv:
        cut = argv.index("--")
        own, trainer_args = argv[:cut], argv[cut + 1:]
    else:
        own, trainer_args = argv, []
    parser = _parser()
    opts = parser.parse_args(own)
    values: dict = {}
    if opts.defaults:
        values.update(spec_mod.load_defaults(opts.defaults))
        if opts.on != "ray":
            values.pop("ray_datasets", None)  # a project's Ray Data hook matters only to --on ray runs
    flags = {
        "nodes": opts.nodes, "nproc_per_node": opts.nproc_per_node, "gpus_per_node": opts.gpus_per_node,
        "cpus_per_node": opts.cpus_per_node, "memory_per_node": opts.memory_per_node, "flavor": opts.flavor,
        "name": opts.name, "namespace": opts.namespace, "repository": opts.repository,
        "service_account": opts.service_account, "tracking_uri": opts.tracking_uri, "address": opts.address,
        "ray_datasets": opts.ray_datasets,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    for key, parsed in (("node_selector", _pairs(opts.node_selector, "--node-selector")),
                        ("env", _pairs(opts.env, "--env")),
                        ("secret_env", _pairs(opts.secret_env, "--secret-env"))):
        if parsed:
            values[key] = {**values.get(key, {}), **parsed}
    if opts.toleration:
        values["tolerations"] = [_toleration(t) for t in opts.toleration]
    spec = LaunchSpec(on=opts.on, project=opts.project, trainer_args=list(trainer_args), dry_run=opts.dry_run,
                      detach=opts.detach, max_processes=opts.max_processes, **values)
    return spec, opts


def _check_trainer_args(spec: LaunchSpec) -> None:
    for arg in spec.trainer_args:
        key = arg.split("=", 1)[0]
        if key == "--nproc" or arg.startswith("nproc="):
            raise LaunchError(f"trainer flag {arg!r}: the launcher decides the process count; use "
                              "--nproc-per-node (and --nodes) before the `--`")


def _has_run_name(args: list[str]) -> bool:
    return any(a == "--run-name" or a.startswith("--run-name=") or a.startswith("run_name=")
               or a.startswith("--set=run_name=") for a in args)


def _pin_run_name(spec: LaunchSpec) -> list[str]:
    """Every rank (and a later --resume) must agree on the run: name it here unless the user did."""
    if _has_run_name(spec.trainer_args):
        return list(spec.trainer_args)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return [*spec.trainer_args, "--set", f"run_name={spec.project}-{stamp}"]


def _run(argv: list[str]) -> int:
    spec, opts = parse(argv)
    spec.validate(variant=spec_mod.lock_variant())
    _check_trainer_args(spec)
    trainer = opts.trainer.absolute()
    if spec.on == "local":
        from tools.launch import local

        spec.trainer_args = _pin_run_name(spec)
        command = [str(trainer), *spec.trainer_args]
        if spec.dry_run:
            print(shlex.join(["torchrun", *local.torchrun_args(spec, command)]))
            return 0
        if not os.access(trainer, os.X_OK):
            raise LaunchError(f"the trainer {trainer} is not an executable; run the launcher through its "
                              "Bazel target (tools/bazel run //<project>:launch)")
        return local.run(spec, command)
    if spec.on == "k8s":
        return _k8s(spec, opts)
    from tools.launch.ray import launch as ray_launch

    spec.trainer_args = _pin_run_name(spec)
    return ray_launch.run(spec, trainer_main=opts.trainer_main, image_info=opts.image_info)


def _k8s(spec: LaunchSpec, opts: argparse.Namespace) -> int:
    from tools.launch import image as image_mod
    from tools.launch.k8s import FLAVORS, common

    if spec.flavor not in FLAVORS:
        raise LaunchError(f"--flavor {spec.flavor} is not available in this build (have: {', '.join(FLAVORS)})")
    if opts.image_info is None:
        raise LaunchError(f"project {spec.project} has no train image: give its :launch target an ml_image "
                          "(image = \":train_image\") so the job runs the digest Bazel built")
    image = image_mod.from_info(opts.image_info, spec.repository)
    spec.trainer_args = _pin_run_name(spec)
    objects = FLAVORS[spec.flavor](spec, image)
    if spec.dry_run:
        sys.stdout.write(common.to_yaml(objects))
        return 0
    from tools.launch.k8s import submit

    api, namespace, client_mod = submit.load_context(opts.context)
    if not opts.skip_push_check:
        image_mod.check_pushed(image)
    submit.apply(api, objects, spec.namespace or namespace)
    return submit.follow(api, client_mod, objects, spec.job_name(), spec.namespace or namespace, detach=spec.detach)


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except LaunchError as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
