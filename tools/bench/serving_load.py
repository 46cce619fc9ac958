"""Benchmark: our model server (TorchScript and ONNX Runtime) vs KServe's Python model server vs the model
called in-process, on the homefeed bundle.

Prints markdown for docs/benchmarks.md. In one run the same closed-loop load is put on five systems, one
after the other (never two at once), the systems taking turns cell by cell:
  ours/torchscript  ml/serving/server.py --runtime torchscript (gRPC, Open Inference Protocol, dynamic batching)
  ours/onnx         the same server with --runtime onnx: the bundle's ONNX artifact on ONNX Runtime
  kserve            KServe's Python ModelServer (PyPI `kserve`) serving the same model.pt through a small
                    kserve.Model subclass (kserve_model.py) over its v2 gRPC server, in its own virtualenv
                    and process (cached under ~/.cache/mlenv/kserve-venv): kserve and tritonclient must never
                    share a process (kserve#3099), so this script never imports kserve
  in-process/*      the bundle's TorchScript / ONNX artifact loaded by ml/serving's runtimes and called
                    directly from the client threads, no network: the ceiling a server of that runtime could
                    approach
Load (serving_loadgen.py): for each concurrency C and batch B, C threads (each with its own tritonclient.grpc
client) send requests of B rows (golden.npz rows, tiled) back to back: a warm-up, then a measured window.
Every system first answers the golden inputs and must match the golden outputs (atol 1e-5), else the run
aborts. Client and servers share this machine's cores; all traffic stays on 127.0.0.1. Servers are started
by serving_launch.py; the tables are written by serving_report.py.

usage: tools/bazel run //tools/bench:serving_load -- [--duration 10] [--concurrency 1,8,32] [--batch 1,32,256]
           [--skip-kserve] [--bundle PATH] [--torch-threads 1] [--device cuda]
           [--server-cpus 0-3 --client-cpus 4-15] [--client-procs 4]
On a machine with cores to spare, --server-cpus/--client-cpus keep the load generator off the servers'
cores (every server and the in-process calls get the same server cores), and --client-procs spreads the
client threads over processes so that the client's own GIL does not cap what it can send.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np

from tools.bench.serving_launch import KSERVE_SPEC, KSERVE_VENV, start_kserve, start_ours, stop_process
from tools.bench.serving_loadgen import (
    ATOL,
    CpuWatch,
    Fail,
    Sample,
    check_outputs,
    empty_rpc_ms,
    grpc_calls,
    grpc_golden,
    load_bundle,
    pin,
    pool,
    request_rows,
    run_load,
    run_load_procs,
)
from tools.bench.serving_report import SYSTEMS, fmt_cpus, report

RUNTIMES = ("torchscript", "onnx")
SCRATCH = Path("/tmp/serving_bench")  # noqa: S108 - a benchmark's scratch folder, recreated per run


def parse_cpus(text: str) -> list[int]:
    """'0-3,8' -> [0, 1, 2, 3, 8]"""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want cores like 0-3,8, got {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"want cores like 0-3,8, got {text!r}")
    return sorted(set(cpus))


def parse_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want positive integers separated by commas, got {text!r}")
    return values


def default_bundle() -> Path:
    root = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or Path(__file__).resolve().parents[2]
    return Path(root) / "bazel-bin" / "ml" / "homefeed" / "bundle"


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each cell")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every cell this many times (pooled)")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8, 32], help="client threads, e.g. 1,8,32")
    parser.add_argument("--batch", type=parse_list, default=[1, 32, 256], help="rows per request, e.g. 1,32,256")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="homefeed bundle (default: $BUILD_WORKSPACE_DIRECTORY or the repo, /bazel-bin/ml/homefeed/bundle)")
    parser.add_argument("--skip-kserve", action="store_true", help="measure ours and in-process only")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for every system (servers and in-process); default 1")
    parser.add_argument("--server-threads", type=int, default=16,
                        help="gRPC handler threads: our --workers and kserve's --max_threads (default 16)")
    parser.add_argument("--instances", type=int, default=1,
                        help="our server's --instances: model threads, each with --torch-threads intra-op threads "
                             "(default 1: the same torch threads as kserve's one model)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None,
                        help="passed to our server (default: the bundle's max_queue_delay_us)")
    parser.add_argument("--kserve-venv", type=Path, default=KSERVE_VENV, help=f"kserve virtualenv (default {KSERVE_VENV})")
    parser.add_argument("--kserve-spec", default=KSERVE_SPEC, help=f"pip requirement for kserve (default {KSERVE_SPEC})")
    parser.add_argument("--kserve-torch", default=None, help="pip requirement for torch in the kserve venv "
                                                             "(default: torch==<this torch's version>)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds a server may take to become ready")
    parser.add_argument("--workdir", type=Path, default=SCRATCH, help=f"scratch folder (default {SCRATCH})")
    parser.add_argument("--json", type=Path, help="also write the raw cells here")
    parser.add_argument("--device", default="cpu", help="where every system runs the model: cpu (default) or cuda[:N]")
    parser.add_argument("--atol", type=float, default=ATOL,
                        help=f"golden tolerance for every system (default {ATOL}; a GPU's kernels round differently "
                             f"from the CPU that wrote the golden outputs)")
    parser.add_argument("--server-cpus", type=parse_cpus, default=None,
                        help="cores for the servers and the in-process calls, e.g. 0-3 (default: all)")
    parser.add_argument("--client-cpus", type=parse_cpus, default=None,
                        help="cores for the load generator, e.g. 4-15 (default: all)")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="processes the client threads are spread over (default 1: threads of this process)")
    parser.add_argument("--kserve-torch-threads", type=int, default=None,
                        help="torch intra-op threads for kserve (default: --torch-threads); kserve runs one predict "
                             "at a time, so on several cores its best setting is intra-op threads")
    args = parser.parse_args(argv)
    args.kserve_torch_threads = args.kserve_torch_threads or args.torch_threads
    if args.client_procs < 1:
        parser.error(f"--client-procs {args.client_procs}: give at least 1")
    usable = os.sched_getaffinity(0)
    for flag, cpus in (("--server-cpus", args.server_cpus), ("--client-cpus", args.client_cpus)):
        if cpus and not set(cpus) <= usable:
            parser.error(f"{flag}: cores {sorted(set(cpus) - usable)} are not usable here "
                         f"(this process may use {min(usable)}-{max(usable)}, {len(usable)} cores)")

    import torch

    from ml.serving import bundle as bundles

    args.bundle = (args.bundle or default_bundle()).resolve()
    if not (args.bundle / "bundle.json").is_file():
        parser.error(f"no bundle at {args.bundle}: build it (tools/bazel build //ml/homefeed:bundle) or pass --bundle")
    args.kserve_torch = args.kserve_torch or f"torch=={torch.__version__.split('+')[0]}"
    try:
        verified, specs, outs, golden = load_bundle(args.bundle)
    except bundles.BundleError as exc:
        parser.error(str(exc))
    manifest = verified.manifest
    missing = [r for r in RUNTIMES if r not in manifest.get("artifacts", {manifest.get("artifact_format"): 0})]
    if missing:
        parser.error(f"the bundle has no {', '.join(missing)} artifact: rebuild it with formats "
                     f"{list(RUNTIMES)} (the engine exports both)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    notes: dict[str, str] = {}
    serving = manifest.get("serving", {})
    delay = args.max_queue_delay_us if args.max_queue_delay_us is not None else serving.get("max_queue_delay_us", 2000)
    plan = (f"{args.rounds} round(s) x {len(args.batch) * len(args.concurrency)} cells x up to {len(SYSTEMS)} systems "
            f"x ({args.warmup:g} s warm-up + {args.duration:g} s)")
    print(f"serving_load: {plan}; scratch {workdir}", file=sys.stderr, flush=True)

    # SIGTERM (`timeout`, a cancelled job) unwinds like an error, so the `finally` below stops the servers
    # started here; by default it killed this process alone and left them running.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    procs: list[subprocess.Popen] = []
    systems: dict[str, Callable[[int], Callable[[int], Callable[[], None]]]] = {}
    ports: dict[str, int] = {}
    try:
        # ours, one server process per runtime
        for runtime in RUNTIMES:
            try:
                proc, port, _ = start_ours(args, workdir, runtime)
            except Fail as exc:
                raise SystemExit(f"serving_load: {exc}") from None
            procs.append(proc)
            got = grpc_golden(port, specs, outs, golden)
            notes[f"ours/{runtime}_golden"] = f"{check_outputs(f'ours/{runtime}', got, golden, outs, args.atol):.1e}"
            systems[f"ours/{runtime}"] = lambda b, port=port: grpc_calls(port, specs, outs, golden, b)
            ports[f"ours/{runtime}"] = port
        pin(args.client_cpus)
        notes["rpc_floor_ms"] = f"{empty_rpc_ms(ports['ours/torchscript']):.3f}"

        # kserve, in its own venv and process
        if args.skip_kserve:
            notes["kserve_skipped"] = "--skip-kserve was given"
        else:
            try:
                proc, port, _ = start_kserve(args, workdir, specs, outs)
                procs.append(proc)
                notes["kserve_version"] = (args.kserve_venv / ".mlenv-bench").read_text().splitlines()[1]
                got = grpc_golden(port, specs, outs, golden)
                notes["kserve_golden"] = f"{check_outputs('kserve', got, golden, outs, args.atol):.1e}"
                systems["kserve"] = lambda b, port=port: grpc_calls(port, specs, outs, golden, b)
                ports["kserve"] = port
            except (Fail, subprocess.SubprocessError, OSError) as exc:
                notes["kserve_skipped"] = str(exc)
                print(f"serving_load: kserve not measured: {exc}", file=sys.stderr, flush=True)

        # in-process: the bundle's artifacts through ml/serving's runtimes, as the server loads them
        for runtime in RUNTIMES:
            model = bundles.load_model(verified, args.device, threads=args.torch_threads, fmt=runtime)
            got = model.run([golden["input." + s["name"]] for s in specs])
            notes[f"in-process/{runtime}_golden"] = f"{check_outputs(f'in-process/{runtime}', got, golden, outs, args.atol):.1e}"

            def inproc_calls(batch: int, model=model):
                arrays = request_rows(specs, golden, batch)

                def make_call(_: int) -> Callable[[], None]:
                    return lambda: model.run(arrays)

                return make_call

            systems[f"in-process/{runtime}"] = inproc_calls
        systems = {name: systems[name] for name in SYSTEMS if name in systems}  # the report's order

        # The systems take turns cell by cell (idle servers wait), so drift on the machine hits all of them.
        pin(args.client_cpus)
        if args.client_procs > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            client_pool = ProcessPoolExecutor(args.client_procs, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=pin, initargs=(args.client_cpus,))
            list(client_pool.map(abs, range(args.client_procs)))  # start them now, not inside a measured cell
            procs_to_watch = [p.pid for p in procs] + list(client_pool._processes)
        else:
            client_pool, procs_to_watch = None, [p.pid for p in procs]
        watch = CpuWatch(procs_to_watch)
        samples: dict[tuple[str, int, int], list[Sample]] = {}
        for round_ in range(args.rounds):
            for batch in args.batch:
                for conc in args.concurrency:
                    for system, make_calls in systems.items():
                        try:
                            if system in ports and client_pool is not None:
                                sample = run_load_procs(client_pool, system, ports[system], specs, outs, golden,
                                                        batch, conc, args.warmup, args.duration)
                            else:
                                # In-process calls run on the servers' cores; gRPC clients on the client's.
                                pin(args.server_cpus if system.startswith("in-process") else args.client_cpus)
                                sample = run_load(system, make_calls(batch), batch, conc, args.warmup, args.duration)
                        except Fail as exc:
                            raise SystemExit(f"serving_load: {exc}") from None
                        samples.setdefault((system, batch, conc), []).append(sample)
                        n = sample.latencies.size
                        p50, p99 = np.percentile(sample.latencies, [50, 99]) * 1e3
                        print(f"  round {round_ + 1}  {system:<22}  B={batch:<3} C={conc:<2} {n / sample.seconds:8.1f} "
                              f"req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", file=sys.stderr, flush=True)
        others = watch.others_cores()
    finally:
        for proc in procs:
            stop_process(proc)
        if "client_pool" in locals() and client_pool is not None:
            client_pool.shutdown(cancel_futures=True)
    cells = [pool(system, b, c, s) for (system, b, c), s in samples.items()]

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    print(f"### Serving load: homefeed bundle (`{args.bundle.name}`, version {manifest.get('version')})\n")
    if args.server_cpus or args.client_cpus:
        print(f"- machine: {os.cpu_count()} cores ({cpu}); servers and in-process calls pinned to cores "
              f"{fmt_cpus(args.server_cpus)}, the load generator to cores {fmt_cpus(args.client_cpus)}")
    else:
        print(f"- machine: {os.cpu_count()} cores ({cpu}); load generator and server share them "
              f"(the client's gRPC and serialization work competes with the server for the same cores)")
    if args.device != "cpu":
        print(f"- device: every system runs the model on {args.device} ({torch.cuda.get_device_name(args.device)}); "
              f"golden tolerance {args.atol:g}")
    if args.client_procs > 1:
        print(f"- client: the C threads spread over {args.client_procs} processes (so the client's GIL does not "
              f"cap the load)")
    print(f"- load: closed loop, concurrency {args.concurrency} threads (each its own tritonclient.grpc "
          f"{metadata.version('tritonclient')} client; in-process: plain threads), B rows per request from "
          f"golden.npz (tiled); {args.warmup:g} s warm-up + {args.duration:g} s measured per cell and round, "
          f"{args.rounds} round(s), the systems taking turns cell by cell; percentiles pool all rounds")
    if others is not None:
        print(f"- CPU used by everything but this benchmark and its servers while it measured: {others:.2f} cores "
              f"on average (kernel work included; well above ~0.05 means a busy machine: trust ratios over absolutes)")
    kserve_threads = ("" if args.kserve_torch_threads == args.torch_threads else
                      f", except kserve: {args.kserve_torch_threads} (its one predict at a time may use them all)")
    print(f"- torch {torch.__version__}: torch.set_num_threads({args.torch_threads}) in every system{kserve_threads} "
          f"(servers via OMP_NUM_THREADS/MKL_NUM_THREADS); gRPC handler threads "
          f"{args.server_threads} (ours --workers, kserve --max_threads)")
    print(f"- ours: ml/serving/server.py, one process per runtime, dynamic batching, max_batch_size "
          f"{serving.get('max_batch_size')}, max_queue_delay_us {delay} (an upper bound: idle instances take what is "
          f"queued at once), {args.instances} model instance(s) x {args.torch_threads} intra-op thread(s); "
          f"TorchScript: torch.jit, golden max |diff| {notes['ours/torchscript_golden']}; ONNX Runtime "
          f"{metadata.version('onnxruntime')} (CPU execution provider, one InferenceSession per instance): golden "
          f"max |diff| {notes['ours/onnx_golden']}")
    if "kserve_version" in notes:
        print(f"- KServe {notes['kserve_version']} in its own venv ({args.kserve_venv}: {args.kserve_spec}, "
              f"{args.kserve_torch}) and process: stock kserve.ModelServer with its v2 gRPC server on "
              f"(`--grpc_port <free port> --max_threads {args.server_threads} --enable_latency_logging false`), "
              f"tools/bench/kserve_model.py: a kserve.Model whose synchronous predict(InferRequest) -> InferResponse "
              f"runs the bundle's TorchScript (numpy in, raw bytes out); no batching (kserve's Python server has "
              f"none); its per-call INFO logging muted; golden max |diff| {notes['kserve_golden']}")
    else:
        print(f"- KServe: NOT MEASURED: {notes.get('kserve_skipped')}")
    print(f"- in-process: the bundle's artifacts loaded by ml/serving's runtimes (torch.jit + inference_mode; an "
          f"ONNX Runtime session with {args.torch_threads} intra-op thread(s), shared by the client threads), same "
          f"arrays, no network; golden max |diff| TorchScript {notes['in-process/torchscript_golden']}, ONNX Runtime "
          f"{notes['in-process/onnx_golden']}")
    print()
    print(report(cells, args.batch, args.concurrency, notes))
    if args.json:
        args.json.write_text(json.dumps({"cells": [asdict(c) | {"req_s": c.req_s, "rows_s": c.rows_s} for c in cells],
                                         "notes": notes, "torch_threads": args.torch_threads}, indent=2))
    if "kserve_skipped" not in notes or args.skip_kserve:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"serving_load: kept {workdir} (kserve's log, if it got that far)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
