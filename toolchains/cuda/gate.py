"""The environment-compatibility gate: is this machine able to run the locked torch on its GPUs?

Checked before GPU tests (ml_gpu_test) and when a trainer starts under the CUDA config:
  1. a CPU-only torch has not slipped into the CUDA config (or a CUDA torch into a GPU test's CPU env);
  2. there is a usable NVIDIA driver and as many GPUs as asked for;
  3. the driver supports the CUDA runtime torch was built with (same major, and at least the minimum
     driver NVIDIA publishes for that major: toolchains/accelerators.json `min_driver`);
  4. every visible GPU's compute capability is in torch's arch list (a cubin of the same major and lower
     or equal minor, or PTX of a lower or equal capability that the driver can JIT).
Each problem says what was found, what was expected, and what to do. Probing is separate from checking
(`probe()` vs `check()`), so the checks are unit-tested with faked probes on machines without a GPU.

    python -m toolchains.cuda.gate [--require-gpus N] [--variant cuda]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Gpu", "Probe", "Problem", "check", "main", "probe", "variant_of_environment"]

ACCELERATORS = Path(__file__).absolute().parents[1] / "accelerators.json"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]


@dataclass
class Probe:
    variant: str  # "cpu" or "cuda": which lock this process runs on
    torch_version: str
    torch_cuda: str | None  # CUDA runtime torch was built with, e.g. "13.0"; None for a CPU-only build
    torch_arch_list: list[str]  # e.g. ["sm_80", "sm_90", "compute_90"]
    driver_version: str | None  # e.g. "580.65.06"; None when no NVIDIA driver answers
    driver_cuda: tuple[int, int] | None  # highest CUDA the driver supports, e.g. (13, 0)
    gpus: list[Gpu] = field(default_factory=list)
    driver_error: str | None = None  # why the driver could not be probed


@dataclass(frozen=True)
class Problem:
    check: str
    found: str
    expected: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.check}] found {self.found}; expected {self.expected}. Fix: {self.fix}"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _min_drivers() -> dict[str, str]:
    try:
        return json.loads(ACCELERATORS.read_text())["variants"]["cuda"].get("min_driver", {})
    except (OSError, KeyError, ValueError):
        return {}


def check(p: Probe, *, require_gpus: int = 0, min_driver: dict[str, str] | None = None) -> list[Problem]:
    min_driver = _min_drivers() if min_driver is None else min_driver
    problems: list[Problem] = []
    if p.variant == "cuda" and p.torch_cuda is None:
        problems.append(Problem(
            "torch build", f"a CPU-only torch ({p.torch_version}) in the CUDA config",
            "the CUDA build of torch from third_party/pip/requirements_lock_cuda.txt",
            "the @pypi environment was installed from the CPU lock: run with --config=cuda (it sets "
            "MLENV_ACCELERATOR=cuda), and relock if requirements_lock_cuda.txt pins a +cpu torch"))
    if p.variant == "cpu" and require_gpus and p.torch_cuda is None:
        problems.append(Problem(
            "torch build", f"a CPU-only torch ({p.torch_version}) for a test that needs {require_gpus} GPU(s)",
            "the CUDA environment", "run GPU tests with --config=gpu (which selects the CUDA lock)"))
    wants_gpu = require_gpus > 0 or p.variant == "cuda"
    if not wants_gpu:
        return problems
    if p.driver_version is None:
        problems.append(Problem(
            "driver", f"no usable NVIDIA driver ({p.driver_error or 'nvidia-smi and libcuda.so.1 not found'})",
            "an NVIDIA driver with at least one GPU",
            "run on a machine with an NVIDIA GPU and driver, or run the CPU suite (drop --config=gpu/--config=cuda)"))
        return problems
    if len(p.gpus) < max(require_gpus, 1):
        problems.append(Problem(
            "gpus", f"{len(p.gpus)} GPU(s) visible", f"at least {max(require_gpus, 1)}",
            "run on a machine with more GPUs, lower the test's `gpus`, or check CUDA_VISIBLE_DEVICES"))
    if p.torch_cuda and p.driver_cuda:
        runtime = _version_tuple(p.torch_cuda)[:2]
        major = str(runtime[0])
        if p.driver_cuda[0] < runtime[0]:
            problems.append(Problem(
                "driver vs CUDA runtime",
                f"driver {p.driver_version} supporting CUDA {p.driver_cuda[0]}.{p.driver_cuda[1]}",
                f"a driver for CUDA {p.torch_cuda} (torch {p.torch_version}); minimum {min_driver.get(major, 'unknown')}",
                f"upgrade the NVIDIA driver to >= {min_driver.get(major, 'the CUDA ' + major + ' minimum')}, or pin a "
                f"torch built for CUDA {p.driver_cuda[0]} in toolchains/accelerators.json and relock"))
        elif major in min_driver and _version_tuple(p.driver_version) < _version_tuple(min_driver[major]):
            problems.append(Problem(
                "driver vs CUDA runtime", f"driver {p.driver_version}",
                f">= {min_driver[major]} for any CUDA {major}.x runtime (torch built with {p.torch_cuda})",
                f"upgrade the NVIDIA driver to >= {min_driver[major]}"))
    if p.torch_cuda:
        for gpu in p.gpus:
            if not _arch_supported(gpu.capability, p.torch_arch_list):
                cc = f"sm_{gpu.capability[0]}{gpu.capability[1]}"
                problems.append(Problem(
                    "compute capability", f"GPU {gpu.index} {gpu.name} ({cc})",
                    f"an architecture in torch's list {p.torch_arch_list}",
                    f"use a GPU torch {p.torch_version} supports, or a torch build that ships {cc} "
                    f"(toolchains/accelerators.json, then relock)"))
    return problems


def _arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    major, minor = capability
    for arch in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+?)(\d)([a-z]?)", arch)
        if not m:
            continue
        kind, a_major, a_minor, suffix = m[1], int(m[2]), int(m[3]), m[4]
        if suffix and (a_major, a_minor) != (major, minor):
            continue  # arch-specific cubins (sm_90a) run only on exactly that chip
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True  # cubins run on the same major, equal or higher minor
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True  # PTX is JIT-compiled forward
    return False


def variant_of_environment() -> str:
    """The accelerator variant of the running environment: @pypi's manifest, else $MLENV_ACCELERATOR."""
    for base in filter(None, [os.environ.get("RUNFILES_DIR"), sys.argv[0] + ".runfiles", str(Path.cwd().parent)]):
        # @pypi is `pypi` under WORKSPACE, `<prefix>~pypi` (or `+pypi`) under Bzlmod.
        for repo in [Path(base) / "pypi", *Path(base).glob("*~pypi"), *Path(base).glob("*+pypi")]:
            if (repo / "manifest.json").is_file():
                return json.loads((repo / "manifest.json").read_text()).get("variant", "cpu")
    return os.environ.get("MLENV_ACCELERATOR", "cpu")


def _driver_cuda_version() -> tuple[tuple[int, int] | None, str | None]:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return None, f"libcuda.so.1: {exc}"
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None, "cuDriverGetVersion failed"
    return (version.value // 1000, (version.value % 1000) // 10), None


def probe() -> Probe:
    import torch

    driver_cuda, error = _driver_cuda_version()
    driver_version, gpus = None, []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,name,compute_cap,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                for line in out.stdout.strip().splitlines():
                    index, name, cap, drv = (x.strip() for x in line.split(","))
                    major, minor = cap.split(".")
                    gpus.append(Gpu(int(index), name, (int(major), int(minor))))
                    driver_version = drv
            else:
                error = (error + "; " if error else "") + f"nvidia-smi: {out.stderr.strip() or out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            error = (error + "; " if error else "") + f"nvidia-smi: {exc}"
    else:
        error = (error + "; " if error else "") + "nvidia-smi not on PATH"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and gpus:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if str(g.index) in wanted]
    arch = torch.cuda.get_arch_list() if torch.version.cuda else []
    return Probe(variant_of_environment(), torch.__version__, torch.version.cuda, arch, driver_version, driver_cuda,
                 gpus, error if driver_version is None else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolchains.cuda.gate", description=__doc__.splitlines()[0])
    parser.add_argument("--require-gpus", type=int, default=0)
    parser.add_argument("--variant", choices=["cpu", "cuda"], help="override the detected environment variant")
    args = parser.parse_args(argv)
    found = probe()
    if args.variant:
        found.variant = args.variant
    problems = check(found, require_gpus=args.require_gpus)
    if problems:
        print("mlenv environment gate FAILED:\n" + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    gpus = ", ".join(f"{g.index}:{g.name} sm_{g.capability[0]}{g.capability[1]}" for g in found.gpus) or "none"
    print(f"mlenv environment gate OK: {found.variant} env, torch {found.torch_version} (CUDA {found.torch_cuda}), "
          f"driver {found.driver_version}, GPUs {gpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
