"""A new ML project in one command: `ml/<name>/` that trains, tests, ships and serves from the first minute.

    tools/bazel run //tools/new:project -- --name ads_ctr --framework pytorch [--loop task|native] [--owner TEAM]
    tools/bazel run //tools/new:project -- --name ads_ctr --framework tensorflow [--owner TEAM]

The templates under tools/new/templates/ are real Python, Starlark (`BUILD.bazel.tmpl`) and YAML files, linted
like the rest of the tree. They name the project `__project__` (a valid Python identifier and Bazel package
name, so every file parses as it is) and the owner `__owner__`; generation substitutes both and nothing else.

Bad input (a name that is not a valid Python and Bazel package name, a folder that exists, an unknown framework
or loop) exits 2 before anything is written. The project is written into a hidden temporary folder next to its
destination and renamed into place, so an interrupted run never leaves a half-written project.
"""

from __future__ import annotations

import argparse
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FRAMEWORKS", "Plan", "UsageError", "generate", "main", "plan"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
PROJECT_TOKEN = "__project__"  # noqa: S105 - a template placeholder, not a secret
OWNER_TOKEN = "__owner__"  # noqa: S105 - a template placeholder
LOOP_TOKEN = "__loop__"  # noqa: S105 - a template placeholder

# framework -> (allowed loops, default loop)
FRAMEWORKS = {"pytorch": (("task", "native"), "task"), "tensorflow": (("fit",), "fit")}

LOOP_TEXT = {
    "task": "the trainer: a `Task` (data, model, loss, evaluation) handed to the engine's loop (`ml.engine.trainer.run`)",
    "native": "the trainer: a hand-written `for` loop on the engine's services (`ml.engine.run`, `ml.engine.torch.TorchRun`)",
    "fit": "the trainer: Keras `model.fit` bridged to the engine run by the TensorFlow adapter (`ml.engine.tf`)",
}

# What each variant is made of: destination name -> template path (relative to TEMPLATES).
_COMMON = {"data.py": "common/data.py", "data_test.py": "common/data_test.py", "OWNERS": "common/OWNERS"}
_FILES = {
    ("pytorch", "task"): {"train.py": "pytorch/train_task.py"},
    ("pytorch", "native"): {"train.py": "pytorch/train_native.py"},
    ("tensorflow", "fit"): {"train.py": "tensorflow/train.py"},
}
_FRAMEWORK_FILES = {
    "pytorch": ["BUILD.bazel.tmpl", "README.md", "gpu_test.py", "model.py", "model_test.py", "serve.py", "serve_test.py",
                "sweep.yaml"],
    "tensorflow": ["BUILD.bazel.tmpl", "README.md", "model.py", "model_test.py", "serve.py", "serve_test.py", "sweep.yaml"],
}

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_OWNER = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9._-]+|@[A-Za-z0-9.-]+)?")
_TOKEN = re.compile(r"__(project|owner|loop)__")


class UsageError(ValueError):
    """Bad input: the message names what was wrong and how to fix it (the CLI exits 2)."""


@dataclass(frozen=True)
class Plan:
    """What `generate` will write: the project's folder and its files (destination name -> template)."""

    name: str
    framework: str
    loop: str
    owner: str
    destination: Path
    files: dict[str, Path]

    @property
    def label(self) -> str:
        return f"//ml/{self.name}"


def validate_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        hint = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_")
        hint = f" (e.g. --name {hint})" if hint and _NAME.fullmatch(hint) else ""
        raise UsageError(f"--name {name!r} is not a valid Python package and Bazel package name: use lower-case letters, "
                         f"digits and '_', starting with a letter{hint}")
    if keyword.iskeyword(name) or name in ("test", "tests"):
        raise UsageError(f"--name {name!r} is a Python keyword or a reserved module name; pick another, e.g. {name}_model")
    if "__" in name or len(name) > 64:
        raise UsageError(f"--name {name!r}: no double underscores and at most 64 characters")


def default_owner(workspace: Path) -> str | None:
    """The workspace's git user.email: whoever generates a project owns it until they say otherwise."""
    try:
        out = subprocess.run(["git", "config", "user.email"], cwd=workspace, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def plan(workspace: Path, name: str, framework: str, loop: str | None, owner: str | None) -> Plan:
    """Checks every input and returns what would be written; raises UsageError (nothing written)."""
    validate_name(name)
    if framework not in FRAMEWORKS:
        raise UsageError(f"--framework {framework!r} is not known; use one of {', '.join(sorted(FRAMEWORKS))}")
    loops, default_loop = FRAMEWORKS[framework]
    loop = loop or default_loop
    if loop not in loops:
        if framework == "tensorflow" and loop in ("task", "native"):
            raise UsageError(f"--loop {loop} is PyTorch-only: a TensorFlow project trains with Keras model.fit through "
                             "the engine's TensorFlow adapter (ml/engine/tf); omit --loop (or pass --loop fit)")
        raise UsageError(f"--loop {loop!r} is not known for {framework}; use one of {', '.join(loops)}")
    owner = owner or default_owner(workspace)
    if not owner:
        raise UsageError("no owner: pass --owner TEAM (e.g. --owner @ads/ranking or --owner you@example.com); it goes "
                         "into the project's OWNERS file, which presubmit reads")
    if not _OWNER.fullmatch(owner):
        raise UsageError(f"--owner {owner!r} is not a team (@org/team), a user name or an e-mail address")
    if not (workspace / "WORKSPACE").is_file() or not (workspace / "ml").is_dir():
        raise UsageError(f"{workspace} is not the mlenv workspace (no WORKSPACE and ml/); run through "
                         "`tools/bazel run //tools/new:project -- ...`")
    destination = workspace / "ml" / name
    if destination.exists() or destination.is_symlink():
        raise UsageError(f"{destination} already exists and is never overwritten; pick another --name or remove "
                         "that folder yourself")
    files = {dest: TEMPLATES / src for dest, src in _COMMON.items()}
    files.update({"BUILD.bazel" if f == "BUILD.bazel.tmpl" else f: TEMPLATES / framework / f
                  for f in _FRAMEWORK_FILES[framework]})
    files.update({dest: TEMPLATES / src for dest, src in _FILES[(framework, loop)].items()})
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RuntimeError(f"templates missing from this build: {missing}")
    return Plan(name, framework, loop, owner, destination, files)


def render(text: str, p: Plan) -> str:
    out = text.replace(PROJECT_TOKEN, p.name).replace(OWNER_TOKEN, p.owner).replace(LOOP_TOKEN, LOOP_TEXT[p.loop])
    left = _TOKEN.search(out)
    if left:
        raise RuntimeError(f"placeholder {left.group(0)} left after substitution")
    return out


def generate(p: Plan) -> list[Path]:
    """Writes the project into a temporary sibling folder, then renames it to its destination."""
    p.destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{p.name}.new-", dir=p.destination.parent))
    try:
        for dest, template in sorted(p.files.items()):
            (staging / dest).write_text(render(template.read_text(), p))
        staging.chmod(0o755)
        if p.destination.exists():  # appeared while we wrote: still never overwritten
            raise UsageError(f"{p.destination} appeared while generating; nothing was written")
        os.rename(staging, p.destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [p.destination / dest for dest in sorted(p.files)]


def next_commands(p: Plan) -> list[str]:
    return [f"tools/bazel test {p.label}/...", f"tools/bazel run {p.label}:train", f"tools/bazel run {p.label}:serve"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/bazel run //tools/new:project --", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the project's name: ml/<name>/, Python package ml.<name>")
    parser.add_argument("--framework", required=True, help="pytorch or tensorflow")
    parser.add_argument("--loop", help="pytorch: task (the engine's loop, default) or native (a hand-written loop); "
                                       "tensorflow: fit (Keras model.fit, the default and only choice)")
    parser.add_argument("--owner", help="who reviews changes (OWNERS); default: git config user.email")
    parser.add_argument("--workspace", type=Path, default=Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    prog = "tools/bazel run //tools/new:project --"
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed the problem
        return 2 if exc.code else 0
    try:
        p = plan(args.workspace.resolve(), args.name, args.framework, args.loop, args.owner)
        written = generate(p)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    root = args.workspace.resolve()
    print(f"created {p.destination.relative_to(root)}/ ({p.framework}, {p.loop} loop, owner {p.owner}):")
    for path in written:
        print(f"  {path.relative_to(root)}")
    print("next:")
    for command in next_commands(p):
        print(f"  {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
