"""The first process of every ml_image container: environment gate, then the target's main module.

    ENTRYPOINT ["/usr/bin/python3.11", "-S", "/app/entrypoint.py", "<main, relative to /app/runfiles>"]

It puts the app's runfiles root and the locked environment on sys.path (the same order `bazel run` uses:
our code first, then the environment; `-S` keeps the OS's own site-packages out), exports the same as
PYTHONPATH for child processes (DDP workers, DataLoader workers), then, in a CUDA image, runs the
environment gate (toolchains/cuda/gate.py: driver vs CUDA runtime, compute capability, CPU torch in a CUDA
env) and exits 3 with its report if the machine can't run this image. Finally it runs the main file as
`__main__`, exactly as the Bazel launcher would, with the container's arguments.

Environment knobs: MLENV_SKIP_GATE=1 skips the gate (e.g. to inspect an image on a machine without GPUs);
MLENV_REQUIRE_GPUS (default 1) is how many visible GPUs a CUDA image insists on.
"""

import os
import runpy
import sys

RUNFILES = os.environ.get("RUNFILES_DIR", "/app/runfiles")
WORKSPACE = os.environ.get("MLENV_WORKSPACE_NAME", "mlenv")
SITE_PACKAGES = os.environ.get("MLENV_SITE_PACKAGES", "/opt/mlenv/site-packages")


def _paths() -> list[str]:
    return [os.path.join(RUNFILES, WORKSPACE), SITE_PACKAGES]


def _gate() -> None:
    from toolchains.cuda import gate

    variant = gate.variant_of_environment()
    if variant != "cuda" or os.environ.get("MLENV_SKIP_GATE") == "1":
        return
    need = int(os.environ.get("MLENV_REQUIRE_GPUS", "1"))
    problems = gate.check(gate.probe(), require_gpus=need)
    if problems:
        print("mlenv image: the environment gate refused to start this CUDA image on this machine:\n" +
              "\n".join(f"  - {p}" for p in problems) +
              "\n  (run with --gpus / the NVIDIA container toolkit; MLENV_SKIP_GATE=1 to start anyway)", file=sys.stderr)
        sys.exit(3)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: entrypoint.py <main file relative to the runfiles root> [args...]")
    main_file = os.path.join(RUNFILES, sys.argv[1])
    if not os.path.isfile(main_file):
        sys.exit(f"mlenv image: the main file {main_file} is not in the image; the image was built wrong "
                 "(rebuild it with bazel)")
    paths = _paths()
    sys.path[:0] = [p for p in paths if p not in sys.path]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                        if p and p not in paths])
    _gate()
    sys.argv = [main_file] + sys.argv[2:]
    sys.path[0:0] = [os.path.dirname(main_file)]
    runpy.run_path(main_file, run_name="__main__")


if __name__ == "__main__":
    main()
