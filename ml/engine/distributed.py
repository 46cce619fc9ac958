"""Data-parallel training from 1 to N processes with one code path.

- `--nproc N` on a plain command: `launch()` re-runs the same command as N worker processes on this machine
  under torchrun's elastic agent (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set) and waits; if
  one worker fails, the others are stopped and the launcher exits with its code; a SIGTERM/SIGINT to the
  launcher stops every worker.
- Under torchrun (or any launcher that sets that environment, e.g. a Kubernetes job) `launch()` does nothing:
  the process joins the group it was given.
- `init()` joins the process group: gloo on CPU, NCCL on CUDA (one device per local rank). World size 1
  creates no group at all, so single-process runs pay nothing.
- At exit, a rank that joined a group collects garbage while the interpreter is still whole (see
  `_release_group_at_exit`), so the group's threads stop before finalization can kill them mid-release.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ml.engine.errors import DistributedError

__all__ = ["DistContext", "init", "launch", "shutdown"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: single process, no group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return value
        value = value.detach().clone().to(self.device)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def in_launched_worker() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: list[str] | None = None) -> int | None:
    """Starts `nproc` workers running this same program; returns their exit code, or None to go on in-process.

    The workers run under torchrun's elastic agent (`torch.distributed.run`, in this process): it sets the
    torchrun environment, stops the group when one rank fails, and forwards SIGTERM/SIGINT/SIGHUP to every
    rank, waits for them ($TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 30 s), then kills what is left.
    """
    if nproc <= 1 or in_launched_worker():
        return None
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    argv = list(sys.argv if argv is None else argv)
    python = [sys.executable] + (["-S"] if sys.flags.no_site else [])  # keep Bazel's hermetic interpreter flags
    # torchrun --standalone, built directly: torchrun's own parser would read the trainer's flags as its own.
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, entrypoint=python[0])(*python[1:], *argv)
    except SignalException as exc:
        print(f"mlenv: got {signal.Signals(int(exc.sigval)).name}; every worker was stopped", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, first = min(exc.failures.items(), key=lambda item: item[1].timestamp)
        print(f"mlenv: worker rank {rank} exited with code {first.exitcode}; the other workers were stopped",
              file=sys.stderr)
        return first.exitcode if 0 < first.exitcode < 256 else 1
    return 0


def _select_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise DistributedError("--device cuda was requested but torch sees no CUDA device "
                               f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DistributedError(f"local rank {local_rank} has no GPU: this machine has {count}; "
                                   f"use --nproc <= {count}")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(device: str = "auto") -> DistContext:
    """Joins the process group described by the environment (or none for a single process)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(f"bad torchrun environment: {exc}") from exc
    if world > 1:
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch with --nproc or torchrun")
    selected = _select_device(device, local_rank)
    backend = None
    if world > 1:
        backend = "nccl" if selected.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        _register_exit_release()
    return DistContext(rank, local_rank, world, selected, backend)


_exit_release_registered = threading.Lock()
_GLOO_THREAD = "pt_gloo_runloop"  # the name torch gives gloo's worker threads (Linux /proc/<pid>/task/*/comm)


def _register_exit_release() -> None:
    if _exit_release_registered.acquire(blocking=False):
        atexit.register(_release_group_at_exit)


def _gloo_threads() -> int:
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    count = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().strip() == _GLOO_THREAD
        except OSError:
            pass
    return count


def _release_group_at_exit() -> None:
    """Lets a destroyed group's C++ object, and with it gloo's worker threads, go before interpreter finalization.

    destroy_process_group() drops the group from c10d's registry, but the object (and its worker threads) lives
    as long as anything refers to it, and FSDP modules do, from reference cycles that only the final garbage
    collection frees. A worker that releases a finished collective's tensor after finalization has begun needs
    the GIL, is made to exit by CPython 3.11 inside a noexcept C++ frame, and the rank aborts with
    "terminate called without an active exception" (SIGABRT) after it trained correctly. atexit handlers run
    before that point: collecting here destroys the group while the interpreter is whole (its destructor
    releases the GIL and joins the threads). A group still held from a module global outlives this; its
    threads then get a short GIL-free pause to finish a release already under way.
    """
    gc.collect()
    if _gloo_threads():
        time.sleep(0.05)


def shutdown(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
