"""Benchmark: one model call of the homefeed bundle per runtime: TorchScript as bundled, TorchScript frozen
(torch.jit.freeze + optimize_for_inference), and the bundle's ONNX artifact on ONNX Runtime (CPU EP).

Each cell: the median time of one call over a fixed time window (after warm-up calls), for intra-op threads
T and batch rows B (golden rows, tiled), the runtimes taking turns cell by cell. Every runtime's outputs are
checked against the golden outputs first. Prints a markdown table for docs/benchmarks.md.

    tools/bazel run //tools/bench:runtime_calls -- [--seconds 1] [--threads 1,2] [--batch 1,32,256]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np


def _median_ms(call, seconds: float) -> float:
    for _ in range(20):
        call()
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="default: bazel-bin/ml/homefeed/bundle")
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per cell and runtime")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts, e.g. 1,2")
    parser.add_argument("--batch", default="1,32,256", help="rows per call, e.g. 1,32,256")
    args = parser.parse_args(argv)
    root = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or Path(__file__).resolve().parents[2]
    path = (args.bundle or Path(root) / "bazel-bin" / "ml" / "homefeed" / "bundle").resolve()

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before ONNX Runtime loads: no usage telemetry
    import onnxruntime as ort
    import torch

    from ml.serving import bundle as bundles

    try:
        b = bundles.verify(path)
        _, rel = bundles.artifact_for(b, "onnx")
    except bundles.BundleError as exc:
        parser.error(str(exc))
    inputs, expected = bundles.golden_arrays(b)
    plain = torch.jit.load(io.BytesIO(b.data(bundles.artifact_for(b, "torchscript")[1])), map_location="cpu").eval()
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(
        torch.jit.load(io.BytesIO(b.data(bundles.artifact_for(b, "torchscript")[1])), map_location="cpu").eval()))
    names = [s["name"] for s in b.signature["inputs"]]

    def session(threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        return ort.InferenceSession(b.data(rel), sess_options=options, providers=["CPUExecutionProvider"])

    def torch_call(module, arrays):
        tensors = [torch.from_numpy(a) for a in arrays]

        def call():
            with torch.inference_mode():
                out = module(*tensors)
            return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

        return call

    def ort_call(sess, arrays):
        feed = dict(zip(names, arrays, strict=True))
        return lambda: sess.run(None, feed)

    worst = {}
    for name, call in (("TorchScript", torch_call(plain, inputs)), ("frozen", torch_call(frozen, inputs)),
                       ("ONNX Runtime", ort_call(session(1), inputs))):
        got = call()
        worst[name] = max(float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in zip(got, expected, strict=True))
        if worst[name] > float(b.manifest["golden"]["atol"]):
            raise SystemExit(f"runtime_calls: {name} differs from the golden outputs by {worst[name]:.3g}: aborting")
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        sess = session(threads)
        for batch in [int(v) for v in args.batch.split(",")]:
            take = np.arange(batch) % len(inputs[0])
            arrays = [np.ascontiguousarray(a[take]) for a in inputs]
            ts = _median_ms(torch_call(plain, arrays), args.seconds)
            fr = _median_ms(torch_call(frozen, arrays), args.seconds)
            on = _median_ms(ort_call(sess, arrays), args.seconds)
            rows.append((threads, batch, ts, fr, on))
            print(f"  T={threads} B={batch}: {ts:.3f} / {fr:.3f} / {on:.3f} ms", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__} (CPU EP); golden max |diff|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + "\n")
    print("| threads | batch | TorchScript | frozen + optimize_for_inference | ONNX Runtime (CPU EP) |")
    print("|---:|---:|---:|---:|---:|")
    for threads, batch, ts, fr, on in rows:
        print(f"| {threads} | {batch} | {ts:.3f} ms | {fr:.3f} ms ({ts / fr:.2f}×) | {on:.3f} ms ({ts / on:.2f}×) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
