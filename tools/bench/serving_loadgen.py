"""The load generator of tools/bench/serving_load.py: closed-loop request threads (or processes), their
latency samples and cells, the golden check of a system's answers, the empty-RPC floor, and the CPU watch.

A module of its own so that the servers it loads (serving_launch.py) and the report (serving_report.py) can
change without touching how load is made and measured.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
MODEL_NAME = "homefeed"
ATOL = 1e-5  # golden tolerance on CPU; --atol for devices whose kernels round differently
OIP_TYPES = {"int64": "INT64", "float32": "FP32"}


@dataclass
class Cell:
    """One system under one load, pooled over the rounds."""
    system: str
    batch: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds

    @property
    def rows_s(self) -> float:
        return self.requests * self.batch / self.seconds


@dataclass
class Sample:
    latencies: np.ndarray  # seconds, requests completed inside the measured window
    errors: int
    seconds: float


def pool(system: str, batch: int, concurrency: int, samples: list[Sample]) -> Cell:
    lat = np.concatenate([s.latencies for s in samples])
    p50, p99 = np.percentile(lat, [50, 99]) * 1e3
    return Cell(system, batch, concurrency, int(lat.size), sum(s.errors for s in samples),
                sum(s.seconds for s in samples), float(p50), float(p99))


class Fail(Exception):
    """A system could not be measured; the message says why."""


# ----------------------------------------------------------------------------------------------- inputs

def load_bundle(path: Path):
    """The verified bundle (ml/serving's verify: hashes checked), its input and output specs, and its golden
    arrays as {"input.<name>" | "output.<name>": array}."""
    from ml.serving import bundle

    b = bundle.verify(path)
    inputs, outputs = bundle.golden_arrays(b)
    specs, outs = b.signature["inputs"], b.signature["outputs"]
    golden = {**{"input." + s["name"]: a for s, a in zip(specs, inputs, strict=True)},
              **{"output." + s["name"]: a for s, a in zip(outs, outputs, strict=True)}}
    return b, specs, outs, golden


def request_rows(specs: list[dict], golden: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
    """B request rows per input, in signature order: the golden rows, tiled."""
    have = len(golden["input." + specs[0]["name"]])
    take = np.arange(rows) % have
    return [np.ascontiguousarray(golden["input." + s["name"]][take]) for s in specs]


def check_outputs(system: str, got: list[np.ndarray], golden: dict[str, np.ndarray], outs: list[dict],
                  atol: float = ATOL) -> float:
    worst = 0.0
    for spec, array in zip(outs, got, strict=True):
        want = golden["output." + spec["name"]]
        if array is None or array.shape != want.shape:
            raise SystemExit(f"serving_load: {system}: output {spec['name']} has shape "
                             f"{None if array is None else array.shape}, golden {want.shape}: aborting")
        diff = float(np.max(np.abs(array.astype(np.float64) - want.astype(np.float64))))
        worst = max(worst, diff)
        if not diff <= atol:
            raise SystemExit(f"serving_load: {system}: output {spec['name']} differs from the golden output by "
                             f"{diff:.3g} (> {atol}): aborting, the numbers would not be comparable")
    return worst


# ------------------------------------------------------------------------------------------------- load

def run_load(system: str, make_call: Callable[[int], Callable[[], None]], batch: int, concurrency: int,
             warmup: float, duration: float) -> Sample:
    """Closed loop: `concurrency` threads, each calling its own call() back to back."""
    calls = [make_call(i) for i in range(concurrency)]
    stop = threading.Event()
    records: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []

    def worker(i: int) -> None:
        call, out = calls[i], records[i]
        clock = time.perf_counter
        while not stop.is_set():
            start = clock()
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the cell goes on
                errors[i] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)
                continue
            end = clock()
            out.append((end, end - start))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    t0 = time.perf_counter()
    time.sleep(duration)
    t1 = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    for call in calls:
        if hasattr(call, "close"):
            call.close()
    lat = np.array([d for rec in records for (end, d) in rec if t0 <= end <= t1])
    if lat.size == 0:
        raise Fail(f"{system}: no request completed in {duration:.0f} s"
                   + (f" (first error: {first_error[0]})" if first_error else ""))
    if first_error:
        print(f"serving_load: {system} B={batch} C={concurrency}: {sum(errors)} failed requests, first: "
              f"{first_error[0]}", file=sys.stderr)
    return Sample(lat, sum(errors), t1 - t0)


def pin(cpus: list[int] | None) -> None:
    """Pins the calling thread (and the threads and processes it starts later) to `cpus`."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def _client_task(port: int, specs: list[dict], outs: list[dict], golden: dict[str, np.ndarray], batch: int,
                 threads: int, warmup: float, duration: float) -> tuple[list[float], int, float]:
    """One client process's share of a cell (runs in a --client-procs worker)."""
    sample = run_load("client", grpc_calls(port, specs, outs, golden, batch), batch, threads, warmup, duration)
    return sample.latencies.tolist(), sample.errors, sample.seconds


def run_load_procs(pool_, system: str, port: int, specs, outs, golden, batch: int, concurrency: int,
                   warmup: float, duration: float) -> Sample:
    """run_load over the worker processes of `pool_`: the C threads are split as evenly as they go."""
    procs = min(pool_._max_workers, concurrency)
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    jobs = [pool_.submit(_client_task, port, specs, outs, golden, batch, n, warmup, duration) for n in shares]
    lat, errors, seconds = [], 0, []
    for job in jobs:
        try:
            got, err, secs = job.result(timeout=warmup + duration + 120)
        except Fail as exc:
            raise Fail(f"{system}: {exc}") from None
        lat += got
        errors += err
        seconds.append(secs)
    return Sample(np.array(lat), errors, float(np.mean(seconds)))


def grpc_calls(port: int, specs: list[dict], outs: list[dict], golden: dict[str, np.ndarray], batch: int):
    import tritonclient.grpc as tc

    arrays = request_rows(specs, golden, batch)

    def make_call(_: int) -> Callable[[], None]:
        client = tc.InferenceServerClient(f"{HOST}:{port}")
        inputs = []
        for spec, array in zip(specs, arrays, strict=True):
            tensor = tc.InferInput(spec["name"], list(array.shape), OIP_TYPES[spec["dtype"]])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        first = outs[0]["name"]

        def call() -> None:
            result = client.infer(MODEL_NAME, inputs, client_timeout=60)
            if result.as_numpy(first).shape[0] != batch:
                raise RuntimeError(f"{first}: wrong number of rows")

        call.close = client.close
        return call

    return make_call


def empty_rpc_ms(port: int, calls: int = 2000) -> float:
    """Median round trip of an empty RPC (ServerLive) from one tritonclient: what any gRPC server costs a
    request before it does any work."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"{HOST}:{port}")
    try:
        for _ in range(200):
            client.is_server_live()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            client.is_server_live()
            times.append(time.perf_counter() - start)
    finally:
        client.close()
    return float(np.median(times)) * 1e3


def grpc_golden(port: int, specs: list[dict], outs: list[dict], golden: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"{HOST}:{port}")
    inputs = []
    for spec in specs:
        array = golden["input." + spec["name"]]
        tensor = tc.InferInput(spec["name"], list(array.shape), OIP_TYPES[spec["dtype"]])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(MODEL_NAME, inputs, client_timeout=60)
    client.close()
    return [result.as_numpy(o["name"]) for o in outs]


class CpuWatch:
    """CPU time the rest of the machine used while we measured: /proc/stat busy time minus our processes'."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.start = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(x) for x in fields]
            busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
            ours = 0
            for pid in self.pids:
                stat = Path(f"/proc/{pid}/stat").read_text()
                ours += sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:13])  # utime, stime
            return time.monotonic(), busy, ours
        except (OSError, ValueError, IndexError):
            return None

    def others_cores(self) -> float | None:
        end = self._read()
        if self.start is None or end is None:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        return max(0.0, ((end[1] - self.start[1]) - (end[2] - self.start[2])) / hz / (end[0] - self.start[0]))
