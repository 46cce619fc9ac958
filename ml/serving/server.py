"""mlenv's model server: Open Inference Protocol (KServe v2) over gRPC, serving verified model bundles.

    tools/bazel run //ml/homefeed:serve                        # the homefeed bundle on 127.0.0.1:8001
    python -m ml.serving.server --repository DIR --port 8001 --metrics-port 8002

- Several models and versions at once: `--bundle PATH` (repeatable) and/or `--repository DIR` holding
  `<model>/<version>/bundle.json`; a request without a version gets the newest (numeric versions compare
  as numbers).
- Hot reload: the repository is rescanned every `--poll-seconds` (and on SIGHUP). A new version is verified,
  loaded and checked against its golden batch BEFORE it becomes visible; requests already running keep the
  model object they started with, so none fails. `--keep-versions N` (default 2) retires older versions: their
  model threads stop and their metric series go. Publish a version by renaming its finished folder into
  place (atomic); a folder caught half-copied is retried once its files change, and a version folder
  rewritten in place is reloaded (ModelRepository's docstring has the contract).
- Dynamic batching per model version: an idle model instance runs what is queued at once (a lone request
  never waits); requests that arrive while every instance is busy queue up and run together, up to the
  bundle's max_batch_size rows. max_queue_delay_us only bounds how long a batch waits for requests that
  are already being decoded. `--instances N` model threads per version share the queue (default 1);
  `--threads` (or --torch-threads) sets the runtime's intra-op threads per instance (default $OMP_NUM_THREADS, else
  cores / instances), so N x threads should not exceed the cores the server may use. Which N is best
  depends on the requests (docs/benchmarks.md, 4 cores, homefeed): small ones batch best on 1 instance
  (B=1, 8 clients: 1,920 req/s with 1, 1,261 with 4); large ones gain from more (B=32: 337 with 1, 780 with
  4, 828 with 2 x 2 threads). On a GPU, 1 instance already batched 8-32 clients into 2.5-4x kserve.
- Bad input never takes the server down: unknown model/version -> NOT_FOUND; wrong tensor names, dtypes,
  shapes or byte sizes -> INVALID_ARGUMENT with a message naming the tensor; oversize messages ->
  RESOURCE_EXHAUSTED (gRPC's own limit, --max-message-bytes). A tampered bundle is refused at load; with
  --bundle-public-key so is any bundle not signed by that key (hashes alone prove integrity, not origin).
- Overload is refused at once, never queued without bound: past --max-concurrent-rpcs RPCs in the server, or
  --max-queued-rows rows waiting for one model version, requests get RESOURCE_EXHAUSTED; request memory is
  bounded by max-concurrent-rpcs x max-message-bytes (docs/benchmarks.md: 3x capacity for 30 s).
- `--device cuda[:N]` serves on a GPU: the golden batch is replayed there at load (--golden-atol where its
  kernels round differently from the CPU that wrote the golden outputs), each instance runs its batches on
  its own CUDA stream, and batching matters most there (one kernel launch sequence for many requests).
- `--runtime onnx` serves each bundle's ONNX artifact with ONNX Runtime (one session per instance, --threads
  intra-op threads each; CPU execution provider, or CUDA with --device cuda where onnxruntime-gpu is
  installed); `--runtime torchscript` the TorchScript one. Default: the artifact the bundle names.
- Prometheus metrics on --metrics-port (requests, latency histogram, batch sizes, errors, queue depth).
- SIGTERM/SIGINT: readiness goes false, new requests are refused, in-flight ones finish (--drain-seconds),
  then the process exits 0; the handlers are installed before the models load, so a signal during start-up
  drains too (SIGHUP then means: rescan once serving).
- Binds 127.0.0.1 unless --host says otherwise; TLS with --tls-cert/--tls-key.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ml.serving import bundle as bundles
from ml.serving.batcher import DEFAULT_QUEUED_BATCHES, DynamicBatcher
from ml.serving.metrics import Metrics
from ml.serving.protocol import TORCH_TO_OIP, RequestError
from ml.serving.repository import DEFAULT_KEEP_VERSIONS, LoadedModel, ModelRepository
from ml.serving.service import DEFAULT_RPCS_PER_WORKER, InferenceServer, Servicer, start

# The server's pieces live in their own modules (protocol, batcher, repository, service, metrics); this module
# is the CLI and re-exports what callers used to import from here.
__all__ = ["TORCH_TO_OIP", "DynamicBatcher", "InferenceServer", "LoadedModel", "Metrics", "ModelRepository",
           "RequestError", "Servicer", "main", "start"]


DEFAULT_INSTANCES = 1


def default_threads(instances: int) -> int:
    """Intra-op threads per instance: $OMP_NUM_THREADS when the operator set it (torch itself honours it),
    else this process's usable cores shared among the instances, so that busy instances do not oversubscribe
    the cores (each instance's ops run on their own team of threads)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // instances)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", default=[], type=Path, help="a bundle folder to serve (repeatable)")
    parser.add_argument("--repository", type=Path, help="folder of <model>/<version>/bundle.json, rescanned for new versions")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (0: pick a free one)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port (-1: off)")
    parser.add_argument("--workers", type=int, default=16, help="gRPC worker threads")
    parser.add_argument("--max-message-bytes", type=int, default=64 << 20, help="largest request accepted")
    parser.add_argument("--max-batch-size", type=int, help="override the bundles' max batch size")
    parser.add_argument("--max-queue-delay-us", type=int,
                        help="override the bundles' max queue delay: the longest a queued request waits for requests "
                             "still being decoded to join its batch (a lone request never waits)")
    parser.add_argument("--instances", type=int, default=DEFAULT_INSTANCES,
                        help=f"model threads per model version, taking batches from one queue (default "
                             f"{DEFAULT_INSTANCES}): while one runs a batch the next batch forms and starts on another")
    parser.add_argument("--threads", "--torch-threads", dest="threads", type=int,
                        help="the runtime's intra-op threads per instance (default: $OMP_NUM_THREADS if set, else "
                             "the usable cores divided by --instances, at least 1)")
    parser.add_argument("--runtime", choices=["torchscript", "torch_export", "onnx"],
                        help="which artifact of each bundle to serve, by format: torchscript (TorchScript), "
                             "torch_export, or onnx (ONNX Runtime); default: each bundle's default artifact. The "
                             "chosen artifact is replayed against the golden outputs before it is served")
    parser.add_argument("--device", default="cpu",
                        help="where models run: cpu (default), cuda or cuda:N (the golden batch is replayed there "
                             "before a version is served)")
    parser.add_argument("--golden-atol", type=float,
                        help="tolerance of the load-time golden check, overriding the bundles' (for devices whose "
                             "kernels round differently from the CPU that wrote the golden outputs)")
    parser.add_argument("--keep-versions", type=int, default=DEFAULT_KEEP_VERSIONS,
                        help=f"versions kept per model (default {DEFAULT_KEEP_VERSIONS}; 0: all, each with its weights "
                             f"and model threads, for as long as the server runs)")
    parser.add_argument("--max-concurrent-rpcs", type=int,
                        help=f"RPCs admitted at once (running or waiting for a worker) before the server answers "
                             f"RESOURCE_EXHAUSTED (default {DEFAULT_RPCS_PER_WORKER} x --workers); request memory "
                             f"is bounded by this x --max-message-bytes")
    parser.add_argument("--max-queued-rows", type=int,
                        help=f"rows waiting per model version before requests are refused with RESOURCE_EXHAUSTED "
                             f"(default {DEFAULT_QUEUED_BATCHES} full batches per instance)")
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="repository rescan interval")
    parser.add_argument("--drain-seconds", type=float, default=20.0, help="grace for in-flight requests at shutdown")
    parser.add_argument("--bundle-public-key", type=Path,
                        help="Ed25519 public key (PEM): serve only bundles whose bundle.json.sig it verifies "
                             "(make_bundle --sign-key); without it hashes prove integrity, not who wrote the bundle")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key: serve TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    args = parser.parse_args(argv)
    # Signals first: a SIGTERM or SIGHUP while the models load must drain (or rescan), not kill the process.
    stop = threading.Event()
    rescan = threading.Event()

    def on_stop(*_):
        stop.set()
        rescan.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: rescan.set())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.bundle and not args.repository:
        parser.error("give at least one --bundle or a --repository")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.instances < 1:
        parser.error(f"--instances {args.instances}: give at least 1 model thread per model version")
    if args.golden_atol is not None and not args.golden_atol >= 0:
        parser.error(f"--golden-atol {args.golden_atol}: give a tolerance of 0 or more")
    if args.keep_versions < 0:
        parser.error(f"--keep-versions {args.keep_versions}: give 0 (keep all) or more")
    for flag in ("max_concurrent_rpcs", "max_queued_rows"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: give at least 1, or leave it out")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: give at least 1 thread, or leave it out for the default")
    threads = args.threads or default_threads(args.instances)
    try:
        server = start(bundles_to_load=args.bundle, repository_dir=args.repository, host=args.host, port=args.port,
                       metrics_port=None if args.metrics_port < 0 else args.metrics_port, workers=args.workers,
                       max_message_bytes=args.max_message_bytes, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       keep_versions=args.keep_versions, max_queue_delay_us=args.max_queue_delay_us,
                       max_batch_size=args.max_batch_size, instances=args.instances, device=args.device,
                       golden_atol=args.golden_atol, max_concurrent_rpcs=args.max_concurrent_rpcs,
                       max_queued_rows=args.max_queued_rows, bundle_public_key=args.bundle_public_key,
                       threads=threads, artifact_format=args.runtime)
    except (bundles.BundleError, OSError, ValueError) as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    models = ", ".join(f"{n} (versions {', '.join(server.repository.versions(n))})" for n in server.repository.names())
    print(f"serving {models} on {args.host}:{server.port} (gRPC, Open Inference Protocol"
          f"{', TLS' if args.tls_cert else ''}); metrics on http://{args.host}:{server.metrics_port}/metrics; "
          f"{args.runtime or 'default'} artifact, {args.instances} instance(s) per model x {threads} thread(s) on "
          f"{server.repository.device}",
          file=sys.stderr, flush=True)

    while not stop.is_set():
        rescan.wait(args.poll_seconds)
        if stop.is_set():
            break
        rescan.clear()
        if args.repository:
            server.repository.scan(args.repository)
    print(f"draining: refusing new requests, finishing in-flight ones (up to {args.drain_seconds:.0f} s)",
          file=sys.stderr, flush=True)
    server.stop(args.drain_seconds)
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
