"""Benchmark: the retrieval SavedModel bundle on our model server vs the same SavedModel called in-process.

Prints markdown for docs/benchmarks.md. One run, one bundle (//ml/retrieval:bundle unless --bundle):
  (a) ours: ml/serving/server.py serving the bundle over gRPC (Open Inference Protocol, dynamic batching,
      the SavedModel runtime), loaded by tritonclient.grpc clients in closed loops;
  (b) in-process: the same verified SavedModel loaded through the same runtime (bundle.load_model) and
      called directly from threads of this process: no network, no codec, no batcher.
Each cell (batch B rows per request, C concurrent callers) runs once per round and the systems take turns
cell by cell, so drift on the machine hits both alike. Both first answer the golden inputs and must match
the golden outputs, else the run aborts. The load machinery (closed loop, warm-up, measured window,
latency percentiles) is serving_load.py's.

usage: tools/bazel run //tools/bench:savedmodel_serving -- [--duration 5] [--rounds 2] [--batch 1,32]
                                                           [--concurrency 1,8] [--threads 1] [--bundle PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serving_load as load  # noqa: E402 - the sibling script, importable from its own folder

from ml.serving import bundle  # noqa: E402

DEFAULT_BUNDLE = Path("ml/retrieval/bundle")


def parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell and round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=parse_list, default=[1, 32])
    parser.add_argument("--concurrency", type=parse_list, default=[1, 8])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the model, both systems")
    parser.add_argument("--instances", type=int, default=1, help="our server's model threads per version")
    args = parser.parse_args(argv)
    manifest, specs, outs, golden = load.load_bundle(args.bundle)
    if manifest.get("artifact_format") != "tf_saved_model":
        parser.error(f"{args.bundle} is a {manifest.get('artifact_format')} bundle; this benchmark is for SavedModels")
    load.MODEL_NAME = manifest["name"]
    server_args = argparse.Namespace(bundle=args.bundle, torch_threads=args.threads, server_threads=16,
                                     instances=args.instances, device="cpu", atol=load.ATOL, max_queue_delay_us=None,
                                     start_timeout=180.0, server_cpus=None)
    workdir = Path(tempfile.mkdtemp(prefix="savedmodel-bench-"))
    proc = None
    try:
        proc, port, _ = load.start_ours(server_args, workdir)
        ours_diff = load.check_outputs("ours", load.grpc_golden(port, specs, outs, golden), golden, outs)
        os.environ.update(load.thread_env(args.threads))
        model = bundle.load_model(bundle.verify(args.bundle), "cpu", threads=args.threads)
        inputs = [golden["input." + s["name"]] for s in specs]
        inproc_diff = load.check_outputs("in-process", model.run(inputs), golden, outs)

        def inproc_calls(batch: int):
            arrays = load.request_rows(specs, golden, batch)
            return lambda _: (lambda: model.run(arrays))

        systems = {"ours": lambda b: load.grpc_calls(port, specs, outs, golden, b), "in-process": inproc_calls}
        samples: dict[tuple[str, int, int], list] = {}
        for _ in range(args.rounds):
            for batch in args.batch:
                for conc in args.concurrency:
                    for system, make in systems.items():
                        sample = load.run_load(system, make(batch), batch, conc, args.warmup, args.duration)
                        samples.setdefault((system, batch, conc), []).append(sample)
        cells = {key: load.pool(*key, value) for key, value in samples.items()}
    finally:
        if proc is not None:
            load.stop_process(proc, grace=5)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"bundle {manifest['name']} v{manifest['version']} ({manifest['artifact_format']}), golden max |diff|: ours "
          f"{ours_diff:.1e}, in-process {inproc_diff:.1e}; {args.rounds} rounds x {args.duration:.0f} s per cell, "
          f"{args.threads} intra-op thread(s), {args.instances} server instance(s); load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end\n")
    print("| B | C | ours req/s | in-process req/s | ours ÷ in-process | ours p50 / p99 ms | in-process p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        for conc in args.concurrency:
            a, c = cells[("ours", batch, conc)], cells[("in-process", batch, conc)]
            print(f"| {batch} | {conc} | {a.req_s:.0f} | {c.req_s:.0f} | {a.req_s / c.req_s:.0%} | "
                  f"{a.p50_ms:.2f} / {a.p99_ms:.2f} | {c.p50_ms:.2f} / {c.p99_ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
