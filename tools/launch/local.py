"""`--on local`: the trainer's ranks on this machine under torchrun's elastic agent.

The agent (`torch.distributed.run`, in this process) starts the ranks with the torchrun environment, watches
them, and stops the group when one fails. It also owns the signals: a SIGTERM or SIGINT to the launcher
(Bazel's timeout, a scheduler, Ctrl-C) is forwarded to every rank, the agent waits for them
(`SHUTDOWN_TIMEOUT_S`, or $TORCH_ELASTIC_SHUTDOWN_TIMEOUT), then kills what is left, so no rank outlives the launcher.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid

from tools.launch.spec import LaunchError, LaunchSpec

__all__ = ["SHUTDOWN_TIMEOUT_S", "torchrun_args", "run"]

# How long ranks get to checkpoint and exit after the forwarded signal before the agent kills them.
SHUTDOWN_TIMEOUT_S = 30


def torchrun_args(spec: LaunchSpec, command: list[str]) -> list[str]:
    """The equivalent torchrun command line (what --dry-run prints) for `command` on spec.nproc_per_node ranks."""
    return ["--standalone", "--nnodes=1", f"--nproc-per-node={spec.nproc_per_node}", "--max-restarts=0",
            "--no-python", *command]


def launch_config(spec: LaunchSpec):
    """torchrun --standalone's configuration, built directly: torchrun's own parser would read the trainer's
    flags as its own (argparse matches abbreviations anywhere, so e.g. `--node` is taken as ambiguous)."""
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=spec.nproc_per_node, run_id=str(uuid.uuid4()),
                        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                        shutdown_timeout=int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)))


def run(spec: LaunchSpec, command: list[str]) -> int:
    """Runs the ranks and returns the launcher's exit code (the first failed rank's code, 128+N on signal N)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    if not command:
        raise LaunchError("no trainer command to run")
    if spec.nproc_per_node > 1 and "OMP_NUM_THREADS" not in os.environ:
        # What torchrun's CLI does (this path builds its config directly and skipped it): without it every rank
        # starts one intra-op thread per core, and N ranks oversubscribe the machine N-fold (measured: 2 ranks
        # on 2 cores ran ~10x slower; docs/benchmarks.md, issue 12). Ray Train sets it from the worker's CPUs.
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        elastic_launch(launch_config(spec), entrypoint=command[0])(*command[1:])
    except SignalException as exc:
        signum = int(exc.sigval)
        print(f"launch: got {signal.Signals(signum).name}; every rank was stopped", file=sys.stderr)
        return 128 + signum
    except ChildFailedError as exc:
        rank, first = min(exc.failures.items(), key=lambda item: item[1].timestamp)
        print(f"launch: rank {rank} exited with code {first.exitcode}; the other ranks were stopped",
              file=sys.stderr)
        code = first.exitcode
        return code if 0 < code < 256 else 1
    return 0
