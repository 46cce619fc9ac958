"""Benchmark: rows/s into trainers, the in-process Parquet reader vs Ray Data (ml.data.ray_data), same shards.

Both paths hand 2 consumers (as 2 DDP ranks would be) torch tensor batches of the same rows, shuffled: the reader
as 2 processes each reading its own stream (ml.data.parquet + torch.from_numpy, what homefeed's DataLoader does
with num_workers=0), Ray Data as 2 Ray tasks (0.5 CPU each, like Train workers) iterating a streaming_split of
read_feed() on a local Ray with the rest of the CPUs for its read/preprocess tasks. Also one consumer each.
Each figure is rows per second of the last of ``--epochs`` epochs (the first warms caches and Ray's workers),
and the seconds that epoch took to hand over its first batch; Ray's start-up is not counted. Prints markdown for docs/benchmarks.md.

usage: tools/bazel run //tools/bench:ray_data_input -- [--rows 200000] [--shards 8] [--batch-size 1024]
Ray listens on every interface, so the script re-runs itself inside a private network namespace (`unshare -n`,
loopback only; needs root).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_INSIDE = "MLENV_BENCH_NETNS"


def _reader_stream(files: list[str], batch_size: int, stream: int, streams: int, epochs: int,
                   barrier) -> tuple[float, float]:
    """(rows/s, seconds to the first batch) of one reader stream's last epoch (runs in its own process)."""
    import torch

    from ml.data.parquet import ParquetBatches

    torch.set_num_threads(1)
    reader = ParquetBatches(files, batch_size, seed=0, drop_last=True)
    rate = first = 0.0
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        barrier.wait()
        start, rows = time.perf_counter(), 0
        for batch in reader.iter_stream(stream, streams):
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
            first = first if rows else time.perf_counter() - start
            rows += len(tensors["item_id"])
        rate = rows / (time.perf_counter() - start)
    return rate, first


def _total(results: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(r for r, _ in results), max(f for _, f in results)


def reader_rows_per_s(files: list[str], batch_size: int, streams: int, epochs: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(streams)
        with ctx.Pool(streams) as pool:
            rates = pool.starmap(_reader_stream, [(files, batch_size, s, streams, epochs, barrier)
                                                  for s in range(streams)])
    return _total(rates)


def ray_rows_per_s(folder: str, batch_size: int, consumers: int, epochs: int) -> tuple[float, float]:
    import ray

    from ml.data import ray_data

    @ray.remote(num_cpus=0.5)
    def consume(it, rank: int) -> tuple[float, float]:
        import numpy as np

        rate = first = 0.0
        for epoch in range(epochs):
            seed = int(np.random.SeedSequence([epoch, rank]).generate_state(1)[0] >> 1)
            start, rows = time.perf_counter(), 0
            for batch in it.iter_torch_batches(batch_size=batch_size, drop_last=True, device="cpu",
                                               local_shuffle_buffer_size=16384, local_shuffle_seed=seed,
                                               prefetch_batches=2):
                first = first if rows else time.perf_counter() - start
                rows += len(batch["item_id"])
            rate = rows / (time.perf_counter() - start)
        return rate, first

    ds = ray_data.read_feed(folder, seed=0, num_cpus=0.5)
    splits = ds.streaming_split(consumers, equal=True)
    return _total(ray.get([consume.remote(it, rank) for rank, it in enumerate(splits)]))


def measure(args: argparse.Namespace) -> None:
    import ray

    from ml.data import synthetic

    work = Path(tempfile.mkdtemp(prefix="rdb-", dir="/tmp"))
    try:
        world = synthetic.SyntheticConfig(seed=0)
        files = [str(p) for p in synthetic.generate_shards(work / "shards", world, args.rows, args.shards)]
        results = {}
        for consumers in (1, 2):
            results["reader", consumers] = reader_rows_per_s(files, args.batch_size, consumers, args.epochs)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=str(work / "ray"),
                 log_to_driver=False)
        try:
            for consumers in (1, 2):
                results["ray", consumers] = ray_rows_per_s(str(work / "shards"), args.batch_size, consumers,
                                                           args.epochs)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\n{args.rows} rows in {args.shards} shards (homefeed's default world), batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, load average before/after {args.load_before} / {' '.join(load)}\n")
    print("| consumers | reader in-process (rows/s) | Ray Data (rows/s) | Ray Data / reader | first batch of the "
          "epoch: reader / Ray Data (s) |")
    print("|---|---|---|---|---|")
    for consumers in (1, 2):
        (r, rf), (d, df) = results["reader", consumers], results["ray", consumers]
        print(f"| {consumers} | {r:,.0f} | {d:,.0f} | {d / r:.2f} | {rf:.2f} / {df:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--load-before", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows < args.shards or min(args.rows, args.shards, args.batch_size, args.epochs) < 1:
        parser.error("--rows, --shards, --batch-size and --epochs must be >= 1, and --rows >= --shards")
    if os.environ.get(_INSIDE) != "1":
        if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
            print("ray_data_input: needs root with unshare and ip (util-linux, iproute2): Ray must run in a "
                  "loopback-only network namespace", file=sys.stderr)
            return 2
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        env = dict(os.environ, **{_INSIDE: "1"}, PYTHONPATH=os.pathsep.join(sys.path),
                   RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0")
        cmd = [sys.executable, *(["-S"] if sys.flags.no_site else []), os.path.abspath(__file__), *sys.argv[1:],
               "--load-before", load]
        return subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd],
                              env=env).returncode
    measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
