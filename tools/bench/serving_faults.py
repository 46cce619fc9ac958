"""Benchmark: the model server under hot swaps, overload, faults and a long soak (issue 16's figures).

Prints markdown for docs/benchmarks.md. Each scenario starts the real server (`python -m ml.serving.server`)
as its own process on 127.0.0.1, serving bundles of a small MLP this script exports (its cost per request is
set by --work, so capacity is low enough for one Python client process to offer 3x of it), and drives it
with tritonclient.grpc clients:

  swap      closed-loop load (8 clients) while a new version is published every 2 s (written elsewhere,
            renamed into the repository: the folder contract) and old ones retired, with 1, 2 and 4
            instances: failed requests, versions seen, model threads and RSS before/after.
  overload  capacity measured closed-loop first; then open-loop arrivals at 3x that rate for 30 s: how many
            were admitted and how many refused with RESOURCE_EXHAUSTED, p50/p99 of the admitted, the
            server's peak RSS; then load at capacity again (recovery).
  faults    SIGKILL of the server under load, restart: seconds until it serves again; SIGTERM with
            requests in flight: how many completed, the exit status.
  soak      (not in `all`) --soak-minutes of mixed good and malformed requests with a new version every
            30 s: crashes, errors by kind, RSS after the first minute and at the end.

usage: tools/bazel run //tools/bench:serving_faults -- [all|swap|overload|faults|soak] [--work 6]
       [--soak-minutes 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from ml.engine.export import export_model
from ml.serving import bundle

HOST = "127.0.0.1"
NAME = "mlp"


class Mlp(torch.nn.Module):
    """x float32 [B, 64] -> score [B]; `work` extra 128x128 layers set the cost per row; `bias` tells versions apart."""

    def __init__(self, work: int, bias: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(64, 128)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(128, 128) for _ in range(work))
        self.out = torch.nn.Linear(128, 1)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h).squeeze(1) + self.bias


class Bundles:
    """Writes versions of the model: exported once, bundled per version, published by atomic rename."""

    def __init__(self, root: Path, work: int) -> None:
        self.root, self.repo = root, root / "repo"
        self.repo.mkdir(parents=True)
        self.exports = {}
        self.work = work
        self.next_version = 1

    def publish(self) -> str:
        version = str(self.next_version)
        self.next_version += 1
        bias = float(version)
        export = self.root / f"export-{version}"
        export_model(Mlp(self.work, bias), (torch.randn(4, 64),), input_names=["x"], output_names=["score"],
                     folder=export, onnx=False)  # these bundles are served as TorchScript only
        staging = self.root / f"staging-{version}"
        bundle.write_bundle(export, staging, name=NAME, version=version, label="//tools/bench:serving_faults",
                            lock_digest="bench", git_commit="bench", max_batch_size=64, max_queue_delay_us=2000)
        (self.repo / NAME).mkdir(exist_ok=True)
        os.rename(staging, self.repo / NAME / version)  # the repository contract: a version appears whole
        shutil.rmtree(export)
        return version


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, repo: Path, *, instances: int = 1, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.cmd = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "ml.serving.server",
                    "--repository", str(repo), "--host", HOST, "--port", str(self.port), "--metrics-port", "-1",
                    "--instances", str(instances), "--torch-threads", "1", "--poll-seconds", "0.5", *extra]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Starts the process; returns the seconds until it answered a request."""
        began = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # drain its log
        client = triton.InferenceServerClient(f"{HOST}:{self.port}")
        deadline = began + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} while starting")
            try:
                client.infer(NAME, inputs(1))
                client.close()
                return time.perf_counter() - began
            except InferenceServerException:
                time.sleep(0.05)
        raise RuntimeError("server did not serve within the timeout")

    def status(self, key: str) -> int:
        """A field of /proc/<pid>/status: VmRSS in KiB, Threads."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode if self.proc else 0


def inputs(rows: int, malformed: str = "") -> list:
    data = np.random.default_rng(rows).normal(size=(rows, 64)).astype(np.float32)
    if malformed == "dtype":
        x = triton.InferInput("x", [rows, 64], "FP64")
        x.set_data_from_numpy(data.astype(np.float64))
        return [x]
    if malformed == "shape":
        x = triton.InferInput("x", [rows, 63], "FP32")
        x.set_data_from_numpy(data[:, :63].copy())
        return [x]
    x = triton.InferInput("x", [rows, 64], "FP32")
    x.set_data_from_numpy(data)
    return [x]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def closed_loop(port: int, clients: int, seconds: float, rows: int = 1) -> dict:
    """`clients` threads sending back to back for `seconds`: requests, failures by code, latencies, versions."""
    stop = time.perf_counter() + seconds
    lock = threading.Lock()
    result = {"ok": 0, "errors": Counter(), "latencies": [], "versions": set()}

    def run():
        client = triton.InferenceServerClient(f"{HOST}:{port}")
        request = inputs(rows)
        while time.perf_counter() < stop:
            began = time.perf_counter()
            try:
                version = client.infer(NAME, request, client_timeout=30).get_response().model_version
                with lock:
                    result["ok"] += 1
                    result["latencies"].append(time.perf_counter() - began)
                    result["versions"].add(version)
            except InferenceServerException as exc:
                with lock:
                    result["errors"][exc.status()] += 1
        client.close()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["rate"] = result["ok"] / seconds
    return result


def background_load(port: int, clients: int, seconds: float) -> tuple[threading.Thread, dict]:
    """closed_loop() on a thread of its own; the dict fills in when the thread ends."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(closed_loop(port, clients, seconds)))
    thread.start()
    return thread, result


def scenario_swap(work: int, seconds: float) -> list[str]:
    rows = ["| instances | requests | failed | versions published | versions seen | process threads before → after "
            "| RSS MiB before → after |", "|---|---|---|---|---|---|---|"]
    for instances in (1, 2, 4):
        with tempfile.TemporaryDirectory(prefix="serving-faults-") as tmp:
            repo = Bundles(Path(tmp), work)
            repo.publish()
            server = Server(repo.repo, instances=instances, extra=("--keep-versions", "2"))
            server.start()
            repo.publish()  # two versions kept: the steady state the swaps return to
            time.sleep(1.5)
            closed_loop(server.port, 8, 3.0)  # warm-up with the same 8 clients: gRPC's worker pool at its size
            threads_before, rss_before = server.status("Threads"), server.status("VmRSS")
            published = 0
            loader, load = background_load(server.port, 8, seconds)
            while loader.is_alive():
                time.sleep(2.0)
                if loader.is_alive():
                    repo.publish()
                    published += 1
            loader.join()
            time.sleep(3.0)  # the last retirement drains
            threads_after, rss_after = server.status("Threads"), server.status("VmRSS")
            server.stop()
            failed = sum(load["errors"].values())
            rows.append(f"| {instances} | {load['ok'] + failed:,} | {failed} {dict(load['errors']) or ''} | "
                        f"{published} | {len(load['versions'])} | {threads_before} → {threads_after} | "
                        f"{rss_before / 1024:.0f} → {rss_after / 1024:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def scenario_overload(work: int, seconds: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="serving-faults-") as tmp:
        repo = Bundles(Path(tmp), work)
        repo.publish()
        server = Server(repo.repo, instances=1, extra=("--workers", "8", "--max-concurrent-rpcs", "16"))
        server.start()
        closed_loop(server.port, 4, 2.0)
        capacity = closed_loop(server.port, 4, 5.0)
        rss_idle = server.status("VmRSS")
        rate = 3 * capacity["rate"]
        clients = [triton.InferenceServerClient(f"{HOST}:{server.port}") for _ in range(8)]
        lock = threading.Lock()
        outcome = {"ok": 0, "errors": Counter(), "latencies": [], "pending": 0}
        request = inputs(1)
        peak_rss = [rss_idle]
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                peak_rss[0] = max(peak_rss[0], server.status("VmRSS"))
                time.sleep(0.2)

        def done_at(began):
            def callback(result, error):
                with lock:
                    outcome["pending"] -= 1
                    if error is None:
                        outcome["ok"] += 1
                        outcome["latencies"].append(time.perf_counter() - began)
                    else:
                        outcome["errors"][error.status()] += 1
            return callback

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        sent = 0
        while True:  # open loop: arrivals on a fixed schedule, whatever the server does with them
            now = time.perf_counter()
            if now - start >= seconds:
                break
            due = int((now - start) * rate)
            while sent < due:
                with lock:
                    outcome["pending"] += 1
                clients[sent % len(clients)].async_infer(NAME, request, done_at(time.perf_counter()),
                                                          client_timeout=10)
                sent += 1
            time.sleep(0.001)
        offered = sent / (time.perf_counter() - start)
        deadline = time.perf_counter() + 15
        while outcome["pending"] and time.perf_counter() < deadline:
            time.sleep(0.05)
        sampling.set()
        after = closed_loop(server.port, 4, 5.0)
        rss_after = server.status("VmRSS")
        server.stop()
        for c in clients:
            c.close()
    refused = outcome["errors"].get("StatusCode.RESOURCE_EXHAUSTED", 0)
    other = {k: v for k, v in outcome["errors"].items() if k != "StatusCode.RESOURCE_EXHAUSTED"}
    return [
        "| measure | value |", "|---|---|",
        f"| capacity (closed loop, 4 clients) | {capacity['rate']:.0f} req/s, p99 {percentile(capacity['latencies'], 99):.1f} ms |",
        f"| offered for {seconds:.0f} s (open loop) | {offered:.0f} req/s ({offered / capacity['rate']:.1f}x), {sent:,} requests |",
        f"| admitted | {outcome['ok']:,} ({outcome['ok'] / max(1, sent):.0%}), {outcome['ok'] / seconds:.0f} req/s, "
        f"p50 {percentile(outcome['latencies'], 50):.1f} ms, p99 {percentile(outcome['latencies'], 99):.1f} ms |",
        f"| refused RESOURCE_EXHAUSTED | {refused:,} ({refused / max(1, sent):.0%}) |",
        f"| other errors | {sum(other.values())} {other or ''} |",
        f"| unanswered after 15 s | {outcome['pending']} |",
        f"| server RSS idle → peak → after | {rss_idle / 1024:.0f} → {peak_rss[0] / 1024:.0f} → {rss_after / 1024:.0f} MiB |",
        f"| recovery (closed loop, 4 clients, 5 s) | {after['rate']:.0f} req/s, {sum(after['errors'].values())} errors, "
        f"p99 {percentile(after['latencies'], 99):.1f} ms |",
    ]


def scenario_faults(work: int) -> list[str]:
    rows = ["| fault | result |", "|---|---|"]
    with tempfile.TemporaryDirectory(prefix="serving-faults-") as tmp:
        repo = Bundles(Path(tmp), work)
        repo.publish()
        server = Server(repo.repo)
        cold = server.start()
        loader, load = background_load(server.port, 4, 3.0)
        time.sleep(1.0)
        killed = time.perf_counter()
        server.proc.kill()
        server.proc.wait()
        loader.join()
        restart = server.start()
        back = time.perf_counter() - killed
        rows.append(f"| SIGKILL under load (4 clients), restart at once | serving again {back:.1f} s after the kill "
                    f"(process start to first answer {restart:.1f} s; first cold start {cold:.1f} s); during the "
                    f"outage clients got {dict(load['errors'])} |")
        # SIGTERM with requests in flight: a slow version (many layers), then 16 requests, then SIGTERM.
        server.stop()
    with tempfile.TemporaryDirectory(prefix="serving-faults-") as tmp:
        repo = Bundles(Path(tmp), work * 20)
        repo.publish()
        server = Server(repo.repo, extra=("--drain-seconds", "20"))
        server.start()
        client = triton.InferenceServerClient(f"{HOST}:{server.port}")
        results = []
        done = threading.Event()

        def callback(result, error):
            results.append(error)
            if len(results) == 16:
                done.set()

        for _ in range(16):
            client.async_infer(NAME, inputs(32), callback, client_timeout=60)
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        done.wait(60)
        code = server.proc.wait(60)
        client.close()
        failed = [r for r in results if r is not None]
        rows.append(f"| SIGTERM with 16 requests in flight | {len(results) - len(failed)}/16 completed, "
                    f"{len(failed)} failed; exit status {code} |")
    return rows


def scenario_soak(work: int, minutes: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="serving-faults-") as tmp:
        repo = Bundles(Path(tmp), work)
        repo.publish()
        server = Server(repo.repo, instances=2, extra=("--keep-versions", "2"))
        server.start()
        stop = threading.Event()
        lock = threading.Lock()
        counts = Counter()

        def run(kind):
            client = triton.InferenceServerClient(f"{HOST}:{server.port}")
            good, bad_dtype, bad_shape = inputs(4), inputs(4, "dtype"), inputs(4, "shape")
            n = 0
            while not stop.is_set():
                n += 1
                request = good if kind == "good" or n % 3 == 0 else (bad_dtype if n % 3 == 1 else bad_shape)
                try:
                    client.infer(NAME, request, client_timeout=30)
                    outcome = "OK"
                except InferenceServerException as exc:
                    outcome = exc.status()
                with lock:
                    counts[(kind, outcome)] += 1
            client.close()

        threads = [threading.Thread(target=run, args=(kind,)) for kind in ("good",) * 4 + ("mixed",) * 2]
        for t in threads:
            t.start()
        start = time.perf_counter()
        rss_first = None
        next_swap = start + 30
        while time.perf_counter() - start < minutes * 60:
            time.sleep(1.0)
            if server.proc.poll() is not None:
                break
            if rss_first is None and time.perf_counter() - start >= 60:
                rss_first = server.status("VmRSS")
            if time.perf_counter() >= next_swap:
                repo.publish()
                next_swap += 30
        alive = server.proc.poll() is None
        rss_end = server.status("VmRSS") if alive else 0
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    growth = (rss_end - rss_first) / rss_first if rss_first and rss_end else float("nan")
    summary = ", ".join(f"{kind} {code.removeprefix('StatusCode.')}: {n:,}" for (kind, code), n in sorted(counts.items()))
    return ["| measure | value |", "|---|---|",
            f"| duration | {minutes:.0f} min, 4 good + 2 mixed (1/3 good, 1/3 wrong dtype, 1/3 wrong shape) clients, "
            f"a new version every 30 s ({repo.next_version - 2} swaps) |",
            f"| server alive at the end | {'yes' if alive else 'NO (crashed)'} |",
            f"| outcomes | {summary} |",
            f"| RSS after 1 min → end | {rss_first / 1024 if rss_first else float('nan'):.0f} → {rss_end / 1024:.0f} MiB "
            f"({growth:+.1%}) |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="all", choices=["all", "swap", "overload", "faults", "soak"])
    parser.add_argument("--work", type=int, default=6, help="extra 128x128 layers in the model (cost per row)")
    parser.add_argument("--swap-seconds", type=float, default=20.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; model work {args.work}\n")
    if args.scenario in ("all", "swap"):
        print("#### Hot swap under load\n", *scenario_swap(args.work, args.swap_seconds), "", sep="\n", flush=True)
    if args.scenario in ("all", "overload"):
        print("#### Overload at 3x capacity\n", *scenario_overload(args.work, args.overload_seconds), "", sep="\n",
              flush=True)
    if args.scenario in ("all", "faults"):
        print("#### Faults\n", *scenario_faults(args.work), "", sep="\n", flush=True)
    if args.scenario == "soak":
        print("#### Soak\n", *scenario_soak(args.work, args.soak_minutes), "", sep="\n", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
