"""A rank that ends the way an FSDP trainer does, for distributed_test: finished collectives whose tensors only
gloo's worker threads still hold, the group destroyed through the engine, and the group object itself kept
alive by a reference cycle (FSDP modules make such cycles) until the interpreter exits.

Usage: gloo_exit_worker.py  (under ml.engine.distributed.launch or torchrun; exits 0)
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from ml.engine import distributed


class _Cycle:
    def __init__(self, group: object) -> None:
        self.group = group
        self.me = self


def main() -> int:
    ctx = distributed.init("cpu")
    _Cycle(dist.distributed_c10d._get_default_group())  # freed only by a garbage collection
    for _ in range(200):
        tensor = torch.ones(1000)
        work = dist.all_reduce(tensor, async_op=True)
        del tensor  # the work now holds the only reference to its tensor (and through it the Python object)
        work.wait()
        del work
    distributed.shutdown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
