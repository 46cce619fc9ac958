"""Data-parallel training from 1 to N processes with one code path.

- `--nproc N` on a plain command: `launch()` re-runs the same command as N worker processes on this machine
  with the torchrun environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and waits; if one
  worker fails, the others are stopped and the launcher exits with its code.
- Under torchrun (or any launcher that sets that environment, e.g. a Kubernetes job) `launch()` does nothing:
  the process joins the group it was given.
- `init()` joins the process group: gloo on CPU, NCCL on CUDA (one device per local rank). World size 1
  creates no group at all, so single-process runs pay nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_launched_worker() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: list[str] | None = None) -> int | None:
    """Starts `nproc` workers running this same program; returns their exit code, or None to go on in-process."""
    if nproc <= 1 or in_launched_worker():
        return None
    argv = list(sys.argv if argv is None else argv)
    python = [sys.executable] + (["-S"] if sys.flags.no_site else [])  # keep Bazel's hermetic interpreter flags
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(python + argv, env=env))
    code = 0
    try:
        remaining = set(range(nproc))
        while remaining:
            for rank in list(remaining):
                rc = procs[rank].poll()
                if rc is None:
                    continue
                remaining.discard(rank)
                if rc != 0 and code == 0:
                    code = rc
                    print(f"mlenv: worker rank {rank} exited with code {rc}; stopping the other workers",
                          file=sys.stderr)
                    for other in remaining:
                        procs[other].send_signal(signal.SIGTERM)
            time.sleep(0.05)
    except KeyboardInterrupt:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        return 130
    return code


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
    return DistContext(rank, local_rank, world, selected, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
