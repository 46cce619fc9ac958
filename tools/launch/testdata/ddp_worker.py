"""A real DDP rank for the launcher's process tests: joins the gloo group torchrun describes, records its
pid, then all-reduces until told to stop.

On SIGTERM it writes `stopped-<rank>` and exits 0 (a trainer that checkpoints and leaves), unless
DDP_WORKER_IGNORE_SIGTERM=1 (a stuck rank, which the agent must kill after its grace period).
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> int:
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    stop = {"now": False}

    def on_term(signum, frame):
        if os.environ.get("DDP_WORKER_IGNORE_SIGTERM") == "1":
            return
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    dist.init_process_group("gloo")
    try:
        total = torch.ones(1)
        dist.all_reduce(total)
        (out / f"pid-{rank}").write_text(f"{os.getpid()} {int(total.item())}")
        if os.environ.get("DDP_WORKER_FAIL_RANK") == str(rank):
            return 7
        deadline = time.monotonic() + 300
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.1)
        if stop["now"]:
            (out / f"stopped-{rank}").write_text("ok")
        return 0
    finally:
        # As the engine's TorchRun.close does. Left to interpreter shutdown, gloo's threads can be torn down
        # while joinable (std::terminate, exit -6 instead of this rank's own code; seen once in CI).
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
