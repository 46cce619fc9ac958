"""The report of tools/bench/serving_load.py: markdown tables for docs/benchmarks.md, one per batch size,
the ratios against the issue's goals, and the C = 1 cells against the empty-RPC floor. Every row names the
runtime that ran the model."""

from __future__ import annotations

from tools.bench.serving_loadgen import Cell

# system key -> what the row says: who served, with which runtime
SYSTEMS = {
    "ours/torchscript": "ours, TorchScript (`--runtime torchscript`)",
    "ours/onnx": "ours, ONNX Runtime (`--runtime onnx`)",
    "kserve": "KServe, TorchScript",
    "in-process/torchscript": "in-process TorchScript",
    "in-process/onnx": "in-process ONNX Runtime",
}


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def _ratio(a: Cell | None, b: Cell | None, goal: float, p99: bool = False) -> str:
    if a is None or b is None:
        return "n/a"
    met = a.req_s >= goal * b.req_s and (not p99 or a.p99_ms <= b.p99_ms)
    return f"{a.req_s / b.req_s:.2f}× {'✓' if met else '✗'}"


def report(cells: list[Cell], batches: list[int], concurrency: list[int], notes: dict[str, str]) -> str:
    by = {(c.system, c.batch, c.concurrency): c for c in cells}
    lines = []
    for batch in batches:
        lines += [f"**B = {batch} row{'s' if batch > 1 else ''} per request**", "",
                  "| system (runtime) | C | req/s | rows/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
        for system, name in SYSTEMS.items():
            for conc in concurrency:
                c = by.get((system, batch, conc))
                if c is None:
                    if system == "kserve":
                        lines.append(f"| {name} | {conc} | not measured | | | |")
                    continue
                err = f" ({c.errors} errors)" if c.errors else ""
                lines.append(f"| {name} | {conc} | {fmt(c.req_s)}{err} | {fmt(c.rows_s)} | {c.p50_ms:.2f} | "
                             f"{c.p99_ms:.2f} |")
        lines.append("")
    lines += ["**Ratios** (req/s; goals: ≥ 2× KServe at equal or better p99 where C > 1; ≥ 90 % of the in-process "
              "figure of the same runtime at C ≥ 8)", "",
              "| B | C | ours TS ÷ KServe | ours ORT ÷ KServe | p99 ms: ours TS / ours ORT / KServe | "
              "ours TS ÷ in-process TS | ours ORT ÷ in-process ORT |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in batches:
        for conc in concurrency:
            ts, ort, ks, its, iort = (by.get((s, batch, conc)) for s in SYSTEMS)
            p99 = " / ".join(f"{c.p99_ms:.2f}" if c else "n/a" for c in (ts, ort, ks))
            inproc = [f"{100 * a.req_s / b.req_s:.0f}%{(' ✓' if a.req_s >= 0.9 * b.req_s else ' ✗') if conc >= 8 else ''}"
                      if a and b else "n/a" for a, b in ((ts, its), (ort, iort))]
            lines.append(f"| {batch} | {conc} | {_ratio(ts, ks, 2, True)} | {_ratio(ort, ks, 2, True)} | {p99} | "
                         f"{inproc[0]} | {inproc[1]} |")
    lines.append("")
    floor = float(notes.get("rpc_floor_ms", "nan"))
    if 1 in concurrency and floor == floor:
        lines += [f"**C = 1 against the empty-RPC floor.** One client thread sends one request at a time, so nothing "
                  f"batches and req/s = 1 / latency. An empty tritonclient round trip (ServerLive) to our server took "
                  f"{floor:.3f} ms (median); no gRPC server answers faster than that plus the model call (the "
                  f"in-process p50 of the same runtime):", "",
                  "| B | runtime | floor + model ms | ceiling req/s | ours req/s | ours ÷ ceiling | KServe req/s |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for batch in batches:
            ks = by.get(("kserve", batch, 1))
            for runtime, label in (("torchscript", "TorchScript"), ("onnx", "ONNX Runtime")):
                ours, inproc = by.get((f"ours/{runtime}", batch, 1)), by.get((f"in-process/{runtime}", batch, 1))
                if ours is None or inproc is None:
                    continue
                limit = floor + inproc.p50_ms
                lines.append(f"| {batch} | {label} | {limit:.3f} | {fmt(1e3 / limit)} | {fmt(ours.req_s)} | "
                             f"{100 * ours.req_s * limit / 1e3:.0f}% | "
                             f"{fmt(ks.req_s) if ks and runtime == 'torchscript' else ''} |")
        lines.append("")
    return "\n".join(lines)


def fmt_cpus(cpus: list[int] | None) -> str:
    return "all" if not cpus else ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in _runs(cpus))


def _runs(cpus: list[int]) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for c in cpus:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return [(a, b) for a, b in runs]
