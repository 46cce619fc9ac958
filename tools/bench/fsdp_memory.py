"""Benchmark: FSDP2 vs DDP on CPU/gloo, 2 processes, a model dominated by a large embedding table.

Prints markdown for docs/benchmarks.md: per rank, the bytes of parameters, gradients and Adam state that the
rank holds (exact, from the tensors: a DTensor counts its local shard), peak resident memory (ru_maxrss, which
includes ~0.5 GB of torch itself, so the baseline before the model is shown too), and the median step time.
Both strategies go through the engine's adapter (ml.engine.torch.TorchRun.wrap), as a trainer would.

usage: tools/bazel run //tools/bench:fsdp_memory -- [--rows 400000] [--dim 64] [--steps 30]
(workers talk over 127.0.0.1 only)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ml.engine import distributed


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def worker(args: argparse.Namespace) -> None:
    import torch
    from torch import nn

    from ml.engine import run
    from ml.engine.config import TrainerConfig, parse_config
    from ml.engine.torch import TorchRun

    torch.set_num_threads(1)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = parse_config(TrainerConfig, ["--nproc", "2", "--strategy", args.strategy, "--device", "cpu",
                           "--set", f"run_dir={args.out}/{args.strategy}", "--set", f"run_name={args.strategy}"])
    with run.start(config, project="fsdp-bench") as r, TorchRun(r, config) as t:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Embedding(args.rows, args.dim), nn.Flatten(1), nn.Linear(args.dim * 4, 64), nn.ReLU(),
                            nn.Linear(64, 1))
        net = t.wrap(net)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(t.rank)
        times = []
        for _ in range(args.steps):
            ids = torch.randint(0, args.rows, (args.batch, 4), generator=gen)
            y = torch.rand(args.batch, 1, generator=gen)
            start = time.perf_counter()
            loss = nn.functional.mse_loss(net(ids), y)
            loss.backward()
            grads = _local_bytes(p.grad for p in net.parameters())
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        params = _local_bytes(net.parameters())
        optim = _local_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
        row = {"rank": t.rank, "params": params, "grads": grads, "optim": optim,
               "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "baseline_kb": baseline_kb,
               "step_ms": 1000 * statistics.median(times[3:])}
        Path(args.out, f"{args.strategy}-{t.rank}.json").write_text(json.dumps(row))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"))
    parser.add_argument("--out")
    args = parser.parse_args()
    if distributed.in_launched_worker():
        worker(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        for strategy in ("ddp", "fsdp"):
            argv = [sys.argv[0], "--rows", str(args.rows), "--dim", str(args.dim), "--batch", str(args.batch),
                    "--steps", str(args.steps), "--strategy", strategy, "--out", tmp]
            code = distributed.launch(2, argv)
            if code:
                sys.exit(f"{strategy} workers failed with exit code {code}")
            rows += [json.loads(Path(tmp, f"{strategy}-{rank}.json").read_text()) | {"strategy": strategy}
                     for rank in (0, 1)]
    mib = 1 / (1 << 20)
    print(f"| 2 gloo processes, Embedding({args.rows:,} x {args.dim}) + MLP, Adam, batch {args.batch} | rank | "
          "params MiB | grads MiB | Adam state MiB | peak RSS MiB (before model) | step ms (median) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['rank']} | {r['params'] * mib:.1f} | {r['grads'] * mib:.1f} | "
              f"{r['optim'] * mib:.1f} | {r['peak_rss_kb'] / 1024:.0f} ({r['baseline_kb'] / 1024:.0f}) | "
              f"{r['step_ms']:.1f} |")
    total = {s: sum(r["params"] + r["grads"] + r["optim"] for r in rows if r["strategy"] == s and r["rank"] == 0)
             for s in ("ddp", "fsdp")}
    print(f"\nrank 0 holds {total['fsdp'] / total['ddp']:.2f}x the training-state bytes under fsdp vs ddp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
