"""The servers tools/bench/serving_load.py loads: ours (ml/serving/server.py, one process per runtime) and
KServe's Python ModelServer (kserve_model.py, in its own virtualenv and process), started on loopback
ports and stopped again; plus the kserve virtualenv they need.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.serving_loadgen import ATOL, HOST, MODEL_NAME, Fail, pin

KSERVE_SPEC = "kserve==0.21.0"  # newest on PyPI when written; installs cleanly next to torch 2.13
KSERVE_VENV = Path.home() / ".cache" / "mlenv" / "kserve-venv"
KSERVE_MODEL = Path(__file__).with_name("kserve_model.py")  # run by the kserve venv's python, never imported


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen, log: Path, port: int, what: str, timeout: float) -> None:
    import tritonclient.grpc as tc

    deadline = time.monotonic() + timeout
    client = tc.InferenceServerClient(f"{HOST}:{port}")
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise Fail(f"{what} exited with code {proc.returncode} before it was ready; its log ends:\n"
                           + log_tail(log))
            try:
                if client.is_server_ready(client_timeout=2) and client.is_model_ready(MODEL_NAME, client_timeout=2):
                    return
            except Exception:  # noqa: BLE001, S110 - not listening yet
                pass
            time.sleep(0.25)
    finally:
        client.close()
    raise Fail(f"{what} was not ready after {timeout:.0f} s; its log ends:\n" + log_tail(log))


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def start_ours(args, workdir: Path, runtime: str) -> tuple[subprocess.Popen, int, Path]:
    """ml/serving/server.py on the bundle's `runtime` artifact (--runtime torchscript | onnx)."""
    log = workdir / f"ours-{runtime}.log"
    env = thread_env(args.torch_threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cmd = [sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "ml.serving.server", "--bundle",
           str(args.bundle), "--host", HOST, "--port", "0", "--metrics-port", "-1", "--workers",
           str(args.server_threads), "--drain-seconds", "2", "--instances", str(args.instances), "--threads",
           str(args.torch_threads), "--device", args.device, "--runtime", runtime]
    if args.atol != ATOL:
        cmd += ["--golden-atol", str(args.atol)]
    if args.max_queue_delay_us is not None:
        cmd += ["--max-queue-delay-us", str(args.max_queue_delay_us)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=lambda: pin(args.server_cpus))
    deadline = time.monotonic() + args.start_timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            match = re.search(rf"serving .* on {re.escape(HOST)}:(\d+)", log.read_text(errors="replace"))
            if match:
                port = int(match.group(1))
                wait_ready(proc, log, port, "our server", max(1.0, deadline - time.monotonic()))
                return proc, port, log
            time.sleep(0.1)
        raise Fail(f"our server did not start (exit code {proc.poll()}); its log ends:\n{log_tail(log)}")
    except BaseException:
        stop_process(proc, grace=5)
        raise


# What kserve_model.py imports from the venv: a venv left without one of them (an install cut short, a pip that
# removed grpcio while upgrading) once reached the benchmark and failed there, mid-run.
KSERVE_IMPORTS = ("kserve", "grpc", "torch", "numpy", "uvicorn")


def venv_import_problem(python: Path, modules: tuple[str, ...] | None = None) -> str | None:
    """None when `python` imports every module (default KSERVE_IMPORTS); else what failed (the ImportError,
    or why it did not run)."""
    modules = KSERVE_IMPORTS if modules is None else modules
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    try:
        proc = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} did not run: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"{python} exited {proc.returncode}"
    return None


def ensure_kserve_venv(venv: Path, spec: str, torch_spec: str) -> tuple[Path, str]:
    """Creates (once) the kserve virtualenv; returns its python and the installed kserve version. A cached venv
    is used only if it still imports what kserve_model.py needs; a broken one is rebuilt from scratch."""
    python = venv / "bin" / "python"
    marker = venv / ".mlenv-bench"
    want = f"{spec} {torch_spec}"
    if python.exists() and marker.exists() and marker.read_text().splitlines()[0] == want:
        problem = venv_import_problem(python)
        if problem is None:
            return python, marker.read_text().splitlines()[1]
        print(f"serving_load: the cached {venv} is broken ({problem}); rebuilding it", file=sys.stderr, flush=True)
    if venv.exists():
        if not (venv / "pyvenv.cfg").exists() and any(venv.iterdir()):
            raise Fail(f"--kserve-venv {venv} exists and is not a virtualenv; remove it or choose another folder")
        shutil.rmtree(venv)  # a stale or half-built venv: pip would otherwise keep what it left behind
    return build_kserve_venv(venv, spec, torch_spec)


def build_kserve_venv(venv: Path, spec: str, torch_spec: str) -> tuple[Path, str]:
    """A new virtualenv at `venv` with kserve and torch, checked to import what kserve_model.py needs."""
    python, marker, want = venv / "bin" / "python", venv / ".mlenv-bench", f"{spec} {torch_spec}"
    print(f"serving_load: setting up {venv} ({want}); done once, then cached", file=sys.stderr, flush=True)
    errors = []
    for base in dict.fromkeys([sys.executable, shutil.which("python3") or sys.executable]):
        proc = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
        if proc.returncode == 0 and python.exists():
            break
        errors.append(f"{base} -m venv: {proc.stderr.strip()[-400:]}")
    else:
        raise Fail("could not create a virtualenv for kserve: " + "; ".join(errors))
    proc = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", spec, torch_spec],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise Fail(f"`pip install {spec} {torch_spec}` failed in {venv}:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    problem = venv_import_problem(python)
    if problem is not None:
        raise Fail(f"`pip install {spec} {torch_spec}` succeeded in {venv} but it cannot import what the KServe side "
                   f"needs ({', '.join(KSERVE_IMPORTS)}): {problem}; remove {venv} and run again")
    proc = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('kserve'))"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise Fail(f"kserve installed but its version cannot be read: {proc.stderr[-800:]}")
    version = proc.stdout.strip()
    marker.write_text(f"{want}\n{version}\n")
    return python, version


def start_kserve(args, workdir: Path, specs: list[dict], outs: list[dict]) -> tuple[subprocess.Popen, int, Path]:
    python, _ = ensure_kserve_venv(args.kserve_venv, args.kserve_spec, args.kserve_torch)
    launcher = KSERVE_MODEL
    log = workdir / "kserve.log"
    grpc_port, http_port = free_port(), free_port()
    while http_port == grpc_port:
        http_port = free_port()
    env = thread_env(args.kserve_torch_threads)
    env.pop("PYTHONPATH", None)  # the venv's own packages only: nothing of ours, no tritonclient
    env["PYTHONNOUSERSITE"] = "1"
    cmd = [str(python), str(launcher), "--model_name", MODEL_NAME,
           "--model_path", str(args.bundle / "model" / "model.pt"),
           "--inputs", ",".join(s["name"] for s in specs), "--outputs", ",".join(o["name"] for o in outs),
           "--torch_threads", str(args.kserve_torch_threads), "--grpc_port", str(grpc_port), "--http_port", str(http_port),
           "--max_threads", str(args.server_threads), "--enable_latency_logging", "false", "--device", args.device]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=workdir, preexec_fn=lambda: pin(args.server_cpus))
    try:
        wait_ready(proc, log, grpc_port, "kserve's model server", args.start_timeout)
    except BaseException:
        stop_process(proc, grace=5)
        raise
    return proc, grpc_port, log
