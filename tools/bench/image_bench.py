"""Benchmark: homefeed's train and serve images (ml_image): build time, layer reuse, registry bytes, podman start.

Run from the repository root with the host python (it drives tools/bazel, a registry and podman):

    python3 tools/bench/image_bench.py [--json out.json] [--runs 3]

Measures, in one run on this machine, and prints a markdown section for docs/benchmarks.md:
  1. cold build: `tools/bazel clean` (not --expunge: @pypi stays installed), then
     `tools/bazel build //ml/homefeed:images //ml/homefeed:serve_image.tar`; wall time, and the big actions
     (environment layer, base layer, training, tarball, ...) from Bazel's JSON trace profile;
  2. incremental rebuild after appending one comment line to ml/homefeed/serve.py (code only), and to
     ml/homefeed/train.py (retrains: are the model bytes the same?); which layer digests changed;
  3. each layer's size for both images, and which layers the two images share;
  4. bytes a registry (Debian's docker-registry, loopback, temporary storage) receives for a code-only
     change: push v1, change, rebuild, push v2, blob bytes added and which blobs were new;
  5. podman: load the serve tarball into a private store, then N times `podman run` -> is_server_ready()
     and -> first successful inference (golden batch), and `podman stop -t 10` (medians).

Every changed file is restored (try/finally) and the images rebuilt at the end; the registry, containers and
the private podman store are removed. A code change makes the work tree dirty, and the workspace status
(STABLE_GIT_COMMIT, "-dirty") reaches the bundle's manifest: --pinned-commit-too repeats the registry step
with a constant workspace status to show what the layers alone do.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BAZEL = str(ROOT / "tools" / "bazel")
PKG = "ml/homefeed"
IMAGES = ["//ml/homefeed:images", "//ml/homefeed:serve_image.tar"]
PUSH = "//ml/homefeed:serve_image.push"
CHANGE_LINE = "# image_bench: one-line change (removed again by tools/bench/image_bench.py)\n"
# The private podman invocation that works as root on this machine (no systemd, no shared store).
PODMAN_RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
                    "--network", "host"]

# Actions worth naming in the breakdown: mnemonic-ish prefix of the progress message -> short name.
BIG_ACTIONS = [
    ("Layering the locked environment", "environment layer"),
    ("Training ", "model training (build action)"),
    ("Writing the load-able tarball of //ml/homefeed:serve_image", "serve tarball"),
    ("Writing the load-able tarball of //ml/homefeed:train_image", "train tarball"),
    ("Assembling image //ml/homefeed:serve_image", "serve image layout"),
    ("Assembling image //ml/homefeed:train_image", "train image layout"),
    ("Layering the app", "app layer"),
    ("Layering the model bundle", "model layer"),
    ("Bundling ", "bundle"),
]


# ml/serving/server.py's mapping (importing the server needs its generated protos, not on the host's path).
TORCH_TO_OIP = {"bool": "BOOL", "uint8": "UINT8", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64"}


# Failures of `bazel run :serve_image.push` at the commit this was written against, and what they mean.
BUGS = {
    "expands to more than one file": "ml_image's .push/.verify targets fail analysis: args use "
    "$(rootpath :serve_image) but the image target's DefaultInfo has 3 files (layout, .digest, .layers.json)",
    "something re-encoded the image": "image_push.py runs `skopeo copy` without --preserve-digests; skopeo 1.9 "
    "gzips the uncompressed layers for a docker:// destination, so the registry's manifest digest is not Bazel's",
}


class BenchError(Exception):
    pass


# ------------------------------------------------------------------------------------------------ helpers

def log(msg: str) -> None:
    print(f"[image_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bazel(*args: str, capture: bool = True, extra: list[str] | None = None) -> str:
    """Runs tools/bazel COMMAND [extra flags] ARGS...; raises with its stderr tail on failure."""
    cmd = [BAZEL, args[0], *(extra or []), *args[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise BenchError(f"`tools/bazel {' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout.strip() if capture else ""


def timed_build(targets: list[str], profile: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    bazel("build", f"--profile={profile}", *targets, extra=extra)
    return time.perf_counter() - start


def profile_actions(profile: Path) -> list[dict]:
    """Actions from Bazel's JSON trace profile: [{"name": progress message, "seconds": wall}] longest first."""
    opener = gzip.open if profile.suffix == ".gz" else open
    with opener(profile, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    out = []
    for ev in events:
        if ev.get("ph") == "X" and ev.get("cat") == "action processing":
            out.append({"name": ev.get("name", "?"), "seconds": ev.get("dur", 0) / 1e6})
    return sorted(out, key=lambda a: -a["seconds"])


def breakdown(actions: list[dict]) -> dict[str, float]:
    result: dict[str, float] = {}
    for prefix, short in BIG_ACTIONS:
        total = sum(a["seconds"] for a in actions if a["name"].startswith(prefix))
        if total:
            result[short] = round(total, 1)
    base = [a for a in actions if "base_layer" in a["name"] or "third_party/debian" in a["name"]]
    if base:
        result["base layer (debs -> layer, hashing)"] = round(sum(a["seconds"] for a in base), 1)
    return result


def layers(image: str) -> list[dict]:
    """[{name, diff_id, size}] from <image>.layers.json, bottom layer first."""
    return json.loads((ROOT / "bazel-bin" / PKG / f"{image}.layers.json").read_text())["layers"]


def image_state() -> dict:
    state = {}
    for image in ("train_image", "serve_image"):
        state[image] = {
            "digest": (ROOT / "bazel-bin" / PKG / f"{image}.digest").read_text().strip(),
            "layers": layers(image),
        }
    return state


def changed_layers(before: dict, after: dict) -> dict[str, list[str]]:
    out = {}
    for image in before:
        old = {entry["name"]: entry["diff_id"] for entry in before[image]["layers"]}
        out[image] = [entry["name"] for entry in after[image]["layers"] if old.get(entry["name"]) != entry["diff_id"]]
    return out


def tree_files(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under path."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def zip_entries(path: Path) -> dict[str, str]:
    """{entry: sha256} of a TorchScript archive (a zip), to tell weights (data/) from metadata."""
    if not path.is_file():
        return {}
    with zipfile.ZipFile(path) as z:
        return {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist()}


@contextmanager
def appended(path: Path, line: str):
    """Appends `line` to path for the duration; restores the exact original bytes and mode afterwards."""
    original = path.read_bytes()
    try:
        with open(path, "ab") as f:
            f.write(line.encode())
        yield
    finally:
        path.write_bytes(original)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def machine() -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "mem": gib(mem),
        "loadavg": os.getloadavg(),
        "uptime": uptime,
        "os": platform.platform(),
        "bazel": (ROOT / ".bazelversion").read_text().strip(),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip(),
    }


# ------------------------------------------------------------------------------------------------ registry

class Registry:
    """Debian's docker-registry on a free loopback port with temporary filesystem storage."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True)
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.push_bugs: set[str] = set()
        self.log = open(workdir / "registry.log", "w")  # noqa: SIM115 - written until stop()
        self.proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"docker-registry exited {self.proc.returncode}; see {workdir}/registry.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise BenchError("docker-registry did not listen within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def usage(self) -> tuple[int, dict[str, int]]:
        """(bytes of every file in the storage, {blob digest: size})."""
        total = sum(p.stat().st_size for p in self.storage.rglob("*") if p.is_file())
        blobs = {}
        blob_root = self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
        if blob_root.is_dir():
            for data in blob_root.glob("*/*/data"):
                blobs["sha256:" + data.parent.name] = data.stat().st_size
        return total, blobs

    def push(self, tag: str, extra: list[str]) -> tuple[float, str, str]:
        """Pushes the built serve image as mlenv/homefeed:TAG: (seconds, pushed reference, how).

        Tries the rule's `.push` target; where that fails because of a known ml_image bug (see BUGS), pushes
        the same layout with skopeo directly, as image_push.py does plus --preserve-digests, and checks that
        the registry's manifest digest is Bazel's."""
        repository = f"127.0.0.1:{self.port}/mlenv/homefeed:{tag}"
        start = time.perf_counter()
        try:
            out = bazel("run", PUSH, "--", "--repository", repository, extra=extra)
            return time.perf_counter() - start, out.splitlines()[-1] if out else "", f"tools/bazel run {PUSH}"
        except BenchError as exc:
            bug = next((b for marker, b in BUGS.items() if marker in str(exc)), None)
            if not bug:
                raise
            log(f"{PUSH} failed: {bug}; pushing with skopeo --preserve-digests instead")
            self.push_bugs.add(bug)
        layout = ROOT / "bazel-bin" / PKG / "serve_image"
        index = json.loads((layout / "index.json").read_text())["manifests"][0]
        ref = index.get("annotations", {}).get("org.opencontainers.image.ref.name")
        digest_file = self.storage.parent / "pushed.digest"
        start = time.perf_counter()
        proc = subprocess.run(["skopeo", "copy", "--quiet", "--retry-times", "2", "--preserve-digests",
                               "--digestfile", str(digest_file), "--dest-tls-verify=false",
                               f"oci:{layout}" + (f":{ref}" if ref else ""), f"docker://{repository}"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"skopeo copy --preserve-digests failed: {proc.stderr.strip()}")
        pushed = digest_file.read_text().strip()
        if pushed != index["digest"]:
            raise BenchError(f"the registry stored {pushed}, Bazel built {index['digest']}")
        return seconds, f"{repository.rsplit(':', 1)[0]}@{pushed}", "skopeo copy --preserve-digests (see bugs)"


def push_step(registry: Registry, tag: str, extra: list[str], state: dict) -> dict:
    before_total, before_blobs = registry.usage()
    seconds, ref, how = registry.push(tag, extra)
    after_total, after_blobs = registry.usage()
    names = {entry["diff_id"]: entry["name"] for entry in state["serve_image"]["layers"]}
    names[state["serve_image"]["digest"]] = "manifest"
    new = {d: s for d, s in after_blobs.items() if d not in before_blobs}
    return {
        "tag": tag,
        "seconds": round(seconds, 1),
        "pushed": ref,
        "pushed_with": how,
        "storage_bytes_added": after_total - before_total,
        "blob_bytes_added": sum(new.values()),
        "new_blobs": [{"digest": d, "size": s, "what": names.get(d, "config")} for d, s in sorted(new.items())],
    }


# ------------------------------------------------------------------------------------------------ podman

class Podman:
    def __init__(self, workdir: Path):
        self.root = workdir / "root"
        self.runroot = workdir / "runroot"
        self.tmpdir = workdir / "tmp"
        for d in (self.root, self.runroot, self.tmpdir):
            d.mkdir(parents=True)
        self.base = ["podman", "--root", str(self.root), "--runroot", str(self.runroot), "--tmpdir", str(self.tmpdir),
                     "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise BenchError(f"podman {' '.join(args[:3])} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc

    def cleanup(self, workdir: Path) -> None:
        # Only our private store: containers, images, then any overlay mounts left under it, then the folder.
        for args in (("rm", "-af", "-t", "0"), ("rmi", "-af"), ("unmount", "-a")):
            try:
                self(*args, check=False, timeout=120)
            except subprocess.TimeoutExpired:
                log(f"podman {' '.join(args)} timed out during cleanup")
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(workdir))]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def locked_python() -> tuple[str, dict]:
    output_base = Path(bazel("info", "output_base"))
    python = str(output_base / "external" / "mlenv_python" / "python3")  # the pinned interpreter's wrapper
    site = output_base / "external" / "pypi" / "site-packages"
    return python, {"PYTHONPATH": f"{ROOT}:{site}", "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}


def probe_main(args: list[str]) -> int:
    """In the locked environment: wait for "go", poll readiness, then one golden inference; print JSON."""
    bundle_dir, url, timeout = Path(args[0]), args[1], float(args[2])
    import numpy as np
    import tritonclient.grpc as triton

    from ml.serving import bundle

    b = bundle.verify(bundle_dir)
    inputs, expected = bundle.golden_arrays(b)
    names = [t["name"] for t in b.signature["inputs"]]
    types = [TORCH_TO_OIP[t["dtype"]] for t in b.signature["inputs"]]
    outputs = [t["name"] for t in b.signature["outputs"]]
    print("loaded", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + timeout
    result: dict = {}
    with triton.InferenceServerClient(url) as client:
        while "ready" not in result:
            if time.monotonic() > deadline:
                print(json.dumps({"error": f"not ready within {timeout} s"}), flush=True)
                return 1
            try:
                if client.is_server_ready():
                    result["ready"] = time.monotonic()
                    break
            except Exception:  # noqa: BLE001, S110 -- not listening yet: any gRPC error means "not yet"
                pass
            time.sleep(0.05)
        while True:
            try:
                tensors = []
                for name, array, dtype in zip(names, inputs, types, strict=True):
                    t = triton.InferInput(name, list(array.shape), dtype)
                    t.set_data_from_numpy(np.ascontiguousarray(array))
                    tensors.append(t)
                reply = client.infer(b.name, tensors)
                result["first_inference"] = time.monotonic()
                worst = max(float(np.max(np.abs(reply.as_numpy(n) - e))) for n, e in zip(outputs, expected, strict=True))
                result["golden_max_abs_diff"] = worst
                break
            except Exception as exc:  # noqa: BLE001 -- model not loaded yet
                if time.monotonic() > deadline:
                    print(json.dumps({"error": f"no successful inference within {timeout} s: {exc}"}), flush=True)
                    return 1
                time.sleep(0.05)
    print(json.dumps(result), flush=True)
    return 0


def podman_step(runs: int, workdir: Path) -> dict:
    tarball = ROOT / "bazel-bin" / PKG / "serve_image.tar"
    bundle_dir = ROOT / "bazel-bin" / PKG / "bundle"
    python, env = locked_python()
    podman = Podman(workdir)
    out: dict = {"runs": []}
    try:
        start = time.perf_counter()
        loaded = podman("load", "-i", str(tarball))
        out["load_seconds"] = round(time.perf_counter() - start, 1)
        out["load_output"] = loaded.stdout.strip().splitlines()[-1:]
        config_digest = json.loads((ROOT / "bazel-bin" / PKG / "serve_image" / "index.json").read_text())
        manifest_digest = config_digest["manifests"][0]["digest"]
        manifest = json.loads((ROOT / "bazel-bin" / PKG / "serve_image" / "blobs" / "sha256" /
                               manifest_digest.split(":")[1]).read_text())
        image = manifest["config"]["digest"].split(":")[1]
        size = podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
        out["image_size_in_store"] = int(size) if size.isdigit() else size
        for i in range(runs):
            port, metrics = free_port(), free_port()
            name = f"image-bench-{os.getpid()}-{i}"
            probe = subprocess.Popen([python, "-S", __file__, "_probe", str(bundle_dir), f"127.0.0.1:{port}", "300"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            try:
                if probe.stdout.readline().strip() != "loaded":
                    raise BenchError("the readiness probe failed to start (see stderr above)")
                t0 = time.monotonic()
                probe.stdin.write("go\n")
                probe.stdin.flush()
                run = podman("run", "-d", "--name", name, *PODMAN_RUN_FLAGS, image, "--repository=/models",
                             "--host=127.0.0.1", f"--port={port}", f"--metrics-port={metrics}")
                t_run = time.monotonic() - t0
                line = probe.stdout.readline()
                probe.wait(30)
                result = json.loads(line) if line.strip() else {"error": "probe printed nothing"}
                if "error" in result:
                    logs = podman("logs", name, check=False).stderr[-3000:]
                    raise BenchError(f"run {i}: {result['error']}; container log tail:\n{logs}")
                start = time.perf_counter()
                podman("stop", "-t", "10", name)
                stop_seconds = time.perf_counter() - start
                code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
                out["runs"].append({
                    "container": run.stdout.strip()[:12],
                    "podman_run_returned": round(t_run, 2),
                    "ready": round(result["ready"] - t0, 2),
                    "first_inference": round(result["first_inference"] - t0, 2),
                    "golden_max_abs_diff": result["golden_max_abs_diff"],
                    "stop_seconds": round(stop_seconds, 2),
                    "exit_code": code,
                })
                log(f"podman run {i}: {out['runs'][-1]}")
            finally:
                if probe.poll() is None:
                    probe.kill()
                    probe.wait()
                podman("rm", "-f", "-t", "0", name, check=False)
        for key in ("podman_run_returned", "ready", "first_inference", "stop_seconds"):
            out[f"median_{key}"] = round(statistics.median(r[key] for r in out["runs"]), 2)
    finally:
        podman.cleanup(workdir)
    return out


# ------------------------------------------------------------------------------------------------ report

def sizes_table(state: dict) -> list[str]:
    train = {entry["name"]: entry for entry in state["train_image"]["layers"]}
    rows = ["| layer | size | train_image | serve_image | diff_id |", "|---|---|---|---|---|"]
    for entry in state["serve_image"]["layers"]:
        t = train.get(entry["name"])
        shared = "same blob" if t and t["diff_id"] == entry["diff_id"] else ("differs" if t else "-")
        rows.append(f"| {entry['name']} | {gib(entry['size'])} | {shared} | yes | `{entry['diff_id'][:19]}` |")
    for name, entry in train.items():
        if name not in {e["name"] for e in state["serve_image"]["layers"]}:
            rows.append(f"| {name} | {gib(entry['size'])} | yes | - | `{entry['diff_id'][:19]}` |")
    for image in ("train_image", "serve_image"):
        total = sum(e["size"] for e in state[image]["layers"])
        rows.append(f"| **{image} total** | {gib(total)} | | | `{state[image]['digest'][:19]}` |")
    return rows


def report(r: dict) -> str:
    m = r["machine"]
    lines = [
        "## Images (homefeed train and serve)",
        "",
        f"`python3 tools/bench/image_bench.py --json ...` — {m['os']}, {m['nproc']} cores, {m['mem']}, "
        f"Bazel {m['bazel']}, CPU lock; load average at start {m['loadavg'][0]:.1f} / {m['loadavg'][1]:.1f} / "
        f"{m['loadavg'][2]:.1f} (1/5/15 min), at end {r.get('load_at_end', [0])[0]:.1f}. Measured {m['date']} "
        f"at commit {m['git_commit'][:12]}.",
        "",
    ]
    if "cold" in r:
        c = r["cold"]
        lines += ["| build | wall |", "|---|---|",
                  f"| cold: `tools/bazel clean` then `build {' '.join(IMAGES)}` (@pypi kept) | {c['seconds']:.0f} s |"]
        for name, sec in c["breakdown"].items():
            lines.append(f"| — of which {name} (action wall time) | {sec:.0f} s |")
        lines.append("")
    lines += ["### Layers", ""] + sizes_table(r["state"]) + [""]
    if r.get("incremental"):
        lines += ["### Incremental rebuilds (same targets)", "",
                  "| change | wall | layers changed (train / serve) | notes |", "|---|---|---|---|"]
        for inc in r["incremental"]:
            ch = inc["changed"]
            notes = "; ".join(f"{k} {v:.0f} s" for k, v in inc["breakdown"].items()) or "-"
            if "model_export_files_changed" in inc:
                diff = inc["model_export_files_changed"]
                notes += f"; retrained export files that differ: {', '.join(diff) if diff else 'none'}"
                entries = inc.get("model_pt_entries_changed", [])
                weights = [e for e in entries if "/data/" in e and not e.endswith("serialization_id")]
                notes += (f"; model.pt entries that differ: {len(entries)} ({len(weights)} of them weights"
                          f"{', i.e. only metadata' if entries and not weights else ''})")
            lines.append(f"| {inc['what']} | {inc['seconds']:.0f} s | {', '.join(ch['train_image']) or 'none'} / "
                         f"{', '.join(ch['serve_image']) or 'none'} | {notes} |")
        lines.append("")
    for key, title in (("registry", "Registry bytes for a code-only change (serve.py comment)"),
                       ("registry_pinned", "Same, with a constant workspace status (git commit pinned)")):
        if key not in r:
            continue
        lines += [f"### {title}", "", "| push | wall | blob bytes the registry received | new blobs |", "|---|---|---|---|"]
        for p in r[key]:
            blobs = ", ".join(f"{b['what']} {gib(b['size'])}" for b in p["new_blobs"])
            lines.append(f"| {p['tag']} | {p['seconds']:.0f} s | {gib(p['blob_bytes_added'])} | {blobs} |")
        lines.append("")
    for bug in r.get("push_bugs", []):
        lines += [f"Pushed with `skopeo copy --preserve-digests` directly because: {bug}.", ""]
    if "podman" in r:
        p = r["podman"]
        lines += ["### podman (serve image)", "", "| measure | value |", "|---|---|",
                  f"| `podman load` of serve_image.tar into an empty private store | {p['load_seconds']:.0f} s |",
                  f"| `podman run -d` returned (median of {len(p['runs'])}) | {p['median_podman_run_returned']:.2f} s |",
                  f"| start -> is_server_ready() (median of {len(p['runs'])}) | {p['median_ready']:.2f} s |",
                  f"| start -> first successful inference, golden batch (median) | {p['median_first_inference']:.2f} s |",
                  f"| `podman stop -t 10` (median; exit codes {', '.join(x['exit_code'] for x in p['runs'])}) | "
                  f"{p['median_stop_seconds']:.2f} s |",
                  ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def incremental(what: str, path: Path, targets: list[str], extra: list[str], tmp: Path, key: str,
                while_changed=None, line: str = CHANGE_LINE) -> dict:
    """Appends one comment line to path, rebuilds, compares layers; `while_changed(state)` runs before the
    file is restored (e.g. to push the changed image). The caller rebuilds the restored tree."""
    before = image_state()
    export = ROOT / "bazel-bin" / PKG / "model_export"
    export_before = tree_files(export)
    model_before = zip_entries(export / "model.pt")
    with appended(path, line):
        profile = tmp / f"{key}.profile.json.gz"
        seconds = timed_build(targets, profile, extra)
        after = image_state()
        result = {"what": what, "seconds": round(seconds, 1), "changed": changed_layers(before, after),
                  "breakdown": breakdown(profile_actions(profile)), "state_after": after}
        if path.name == "train.py":
            export_after = tree_files(export)
            result["model_export_files_changed"] = sorted(
                k for k in set(export_before) | set(export_after) if export_before.get(k) != export_after.get(k))
            model_after = zip_entries(export / "model.pt")
            result["model_pt_entries_changed"] = sorted(
                k for k in set(model_before) | set(model_after) if model_before.get(k) != model_after.get(k))
        log(f"{what}: {seconds:.0f} s, changed {result['changed']}")
        if while_changed:
            while_changed(after)
    return result


def pinned_status_flags(tmp: Path) -> list[str]:
    """--workspace_status_command printing the HEAD commit without "-dirty": a constant status."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    script = tmp / "pinned_status.sh"
    script.write_text(f"#!/bin/sh\necho STABLE_GIT_COMMIT {commit}\n")
    script.chmod(0o755)
    return [f"--workspace_status_command={script}"]


def run(args: argparse.Namespace, results: dict, tmp: Path) -> None:
    if not args.no_cold:
        log("cold build: tools/bazel clean, then build")
        bazel("clean")
        profile = tmp / "cold.profile.json.gz"
        seconds = timed_build(IMAGES, profile, [])
        actions = profile_actions(profile)
        results["cold"] = {"seconds": round(seconds, 1), "breakdown": breakdown(actions),
                           "top_actions": [{"name": a["name"], "seconds": round(a["seconds"], 1)}
                                           for a in actions[:15]]}
        log(f"cold build: {seconds:.0f} s; {results['cold']['breakdown']}")
    else:
        bazel("build", *IMAGES)
    state = image_state()
    results["state"] = state

    registry = None
    try:
        if not args.no_registry:
            registry = Registry(tmp / "registry")
            log(f"registry on 127.0.0.1:{registry.port}; push v1")
            results["registry"] = [push_step(registry, "v1", [], state)]
            log(f"push v1: {results['registry'][-1]['blob_bytes_added']} blob bytes")
        if not args.no_podman:
            log("podman: load, then start/ready/stop")
            results["podman"] = podman_step(args.runs, tmp / "podman")

        def push_v2(after: dict) -> None:
            if registry:
                results["registry"].append(push_step(registry, "v2", [], after))
                log(f"push v2: {results['registry'][-1]['blob_bytes_added']} blob bytes")

        results["incremental"].append(incremental(
            "one comment line appended to ml/homefeed/serve.py (code only)", ROOT / PKG / "serve.py", IMAGES, [],
            tmp, "serve_change", push_v2))
        log("serve.py restored; rebuilding")
        start = time.perf_counter()
        bazel("build", *IMAGES)
        results["rebuild_after_restore_seconds"] = round(time.perf_counter() - start, 1)

        if args.pinned_commit_too and registry:
            pinned = pinned_status_flags(tmp)
            log("pinned workspace status: build, push p1")
            bazel("build", *IMAGES[:1], extra=pinned)
            results["registry_pinned"] = [push_step(registry, "p1", pinned, image_state())]

            def push_p2(after: dict) -> None:
                results["registry_pinned"].append(push_step(registry, "p2", pinned, after))
                log(f"push p2: {results['registry_pinned'][-1]['blob_bytes_added']} blob bytes")

            results["incremental"].append(incremental(
                "the same serve.py change, workspace status pinned (no `-dirty` commit)", ROOT / PKG / "serve.py",
                IMAGES[:1], pinned, tmp, "serve_change_pinned", push_p2,
                # A different line than v2's, or the app blob would already be in the registry.
                line=CHANGE_LINE.replace("one-line change", "one-line change (pinned status)")))
    finally:
        if registry:
            results["push_bugs"] = sorted(registry.push_bugs)
            registry.stop()
            log("registry stopped")

    if not args.no_train_change:
        results["incremental"].append(incremental(
            "one comment line appended to ml/homefeed/train.py (retrains)", ROOT / PKG / "train.py", IMAGES[:1], [],
            tmp, "train_change"))


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_probe"]:
        return probe_main(argv[1:])
    # SIGTERM unwinds like Ctrl-C, so the finally blocks restore files and stop the registry and containers.
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--runs", type=int, default=3, help="podman start-to-ready runs (default 3)")
    parser.add_argument("--no-cold", action="store_true", help="skip `bazel clean`: build and measure the rest")
    parser.add_argument("--no-train-change", action="store_true", help="skip the train.py (retraining) case")
    parser.add_argument("--no-registry", action="store_true")
    parser.add_argument("--no-podman", action="store_true")
    parser.add_argument("--pinned-commit-too", action="store_true",
                        help="repeat the code-only registry step with a constant STABLE_GIT_COMMIT")
    args = parser.parse_args(argv)

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    if dirty:
        raise BenchError(f"the work tree has uncommitted changes (they would be measured); commit or stash:\n{dirty}")
    for tool in ("skopeo", "podman", "/usr/bin/docker-registry"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is not installed")

    results: dict = {"machine": machine(), "incremental": []}
    log(f"machine: {results['machine']}")
    tmp = Path(tempfile.mkdtemp(prefix="image-bench-"))
    try:
        run(args, results, tmp)
    finally:
        # Whatever happened, leave bazel-bin with the images of the clean tree (files were restored above).
        still = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        if still:
            log(f"WARNING: the work tree is not clean after the run:\n{still}")
        log("final rebuild of the clean tree")
        try:
            bazel("build", *IMAGES)
        except BenchError as exc:
            log(f"final rebuild failed: {exc}")
        results["load_at_end"] = os.getloadavg()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"image_bench: error: {exc}", file=sys.stderr)
        sys.exit(1)
