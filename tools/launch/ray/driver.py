"""The Ray job's entrypoint: the project's trainer as Ray Train workers (TorchTrainer), one per rank.

    python -S -m tools.launch.ray.driver --main TRAIN.py --workers N [...] -- <trainer flags>

Each worker runs the trainer's main file as `__main__` with the trainer flags (as the image's entrypoint
and `bazel run` do), inside the process group TorchTrainer created (gloo, NCCL on GPUs). The engine finds
its rank from the torchrun variables Ray Train's torch backend exports and reuses that group
(ml/engine/torch/session.py), so checkpoints, MLflow, TensorBoard and `--resume` are the engine's own: no
Ray checkpoint is reported. A trainer that exits non-zero fails the job (no retries: `max_failures=0`;
a resume is an explicit relaunch with `--resume`, as on a laptop).

Ray Data seam: `--datasets MODULE:FUNCTION` names a function `f(trainer_args) -> {name: ray.data.Dataset}`
(importable on the cluster); its datasets go to `TorchTrainer(datasets=...)` and each worker reads its
shard with `ray.train.get_dataset_shard(name)`. Workers take fractional CPUs so Ray Data's tasks can run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import runpy
import sys

__all__ = ["main", "train_worker"]


def train_worker(config: dict) -> None:
    """Runs in every Ray Train worker: the trainer's main as __main__, with the trainer flags."""
    main_file, args = config["main"], list(config["args"])
    saved = list(sys.argv), list(sys.path), os.getcwd()
    sys.argv = [main_file, *args]
    sys.path.insert(0, os.path.dirname(main_file))
    if config.get("cwd"):
        # The launcher's own folder (a cluster on this machine): relative paths (MLflow's ./mlruns, a relative
        # --set data_dir) mean what they mean under --on local, not the Ray session's temp folder.
        os.chdir(config["cwd"])
    try:
        runpy.run_path(main_file, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"the trainer {main_file} exited with {exc.code}") from None
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.chdir(saved[2])


def _datasets(hook: str | None, trainer_args: list[str]) -> dict | None:
    """The optional Ray Data input: MODULE:FUNCTION returning {name: Dataset}."""
    if not hook:
        return None
    module, _, name = hook.partition(":")
    return getattr(importlib.import_module(module), name)(trainer_args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools.launch.ray.driver")
    p.add_argument("--main", required=True, help="the trainer's main file on the nodes")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument("--gpus-per-worker", type=int, default=0)
    p.add_argument("--placement", default="PACK")
    p.add_argument("--backend", default="gloo")
    p.add_argument("--storage", help="Ray Train's storage_path (its own run state; default ~/ray_results)")
    p.add_argument("--name", default="mlenv")
    p.add_argument("--cwd", help="the folder each worker runs the trainer in (default: Ray's)")
    p.add_argument("--datasets", help="MODULE:FUNCTION returning {name: ray.data.Dataset} (optional)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    opts, trainer_args = _parser().parse_args(argv[:cut]), argv[cut + 1:]
    if not os.path.isfile(opts.main):
        print(f"ray driver: the trainer's main file {opts.main} is not on this node; the cluster does not run "
              "this project's code (see docs/launch.md, --on ray: how the code reaches the job)", file=sys.stderr)
        return 2
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address="auto", log_to_driver=True)
    resources = {"CPU": opts.cpus_per_worker, **({"GPU": opts.gpus_per_worker} if opts.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"main": opts.main, "args": trainer_args, "cwd": opts.cwd},
        torch_config=TorchConfig(backend=opts.backend),
        scaling_config=ScalingConfig(num_workers=opts.workers, use_gpu=bool(opts.gpus_per_worker),
                                     resources_per_worker=resources, placement_strategy=opts.placement),
        run_config=RunConfig(name=opts.name, storage_path=opts.storage, failure_config=FailureConfig(max_failures=0)),
        datasets=_datasets(opts.datasets, trainer_args),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's error; its text is the report
        print(f"ray driver: training failed: {exc}", file=sys.stderr)
        return 1
    print("ray driver: training finished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
