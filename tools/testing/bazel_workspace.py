"""Real Bazel on a sample workspace, from inside a Bazel test.

    ws = SampleWorkspace.create(tmp_path / "ws", copy={"toolchains/python": "toolchains/python"})
    ws.write("BUILD.bazel", 'py_binary(name = "bin", srcs = ["bin.py"])')
    result = ws.bazel("run", "//:bin")
    ws.shutdown()

A sample reuses this build's @mlenv_python (the unpacked pinned interpreter) unless told otherwise.
The sample gets the local stand-ins for @rules_cc/@rules_java/@remote_coverage_tools (from the test's
runfiles, via //tools/testing:standins) and its own output root under the test's temp dir, so it never
touches the outer build. Bazel is found like tools/bazel finds it: $BAZEL_REAL, then Debian's
/usr/bin/bazel-4, then `bazel` on PATH.

Samples are WORKSPACE repositories under every Bazel version. Bazel 7+ turns Bzlmod on by default (and then
asks the Bazel Central Registry for its modules), and Bazel 4.2.3 rejects the flags that turn it off, so the
flags are picked by `bazel --version`: for 7+, a user rc file (`--bazelrc`, a startup option, so callers that
pass only startup options, like presubmit, get it too) says `--noenable_bzlmod --enable_workspace` and points
the repositories Bazel 7's WORKSPACE suffix would download at a local copy (Debian's, where installed).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

STANDINS = ("rules_cc", "rules_java", "remote_coverage_tools")
# Commands that take --override_repository (build options); others (shutdown, clean, version) refuse it.
BUILD_COMMANDS = ("build", "test", "run", "coverage", "query", "cquery", "aquery", "fetch", "sync", "info")
WORKSPACE_HEADER = "".join(
    f'local_repository(name = "{name}", path = "third_party/bazel_standins/{name}")\n' for name in STANDINS)


def find_bazel() -> str:
    for candidate in (os.environ.get("BAZEL_REAL", ""), "/usr/bin/bazel-4", shutil.which("bazel") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no Bazel binary found for the sample workspace: set BAZEL_REAL or install bazel-bootstrap")


# Repositories Bazel 7's WORKSPACE suffix declares as http_archive, and where Debian's bazel-bootstrap keeps a
# copy (sid's bazel-bootstrap 7.7.1; docs/ci.md). Without a local copy Bazel 7 fetches them itself.
DEBIAN_RULES = {
    "bazel_skylib": "/usr/share/bazel/tools/skylib",
    "platforms": "/usr/share/bazel/tools/platforms",
    "rules_python": "/usr/share/bazel/rules/python",
}


@functools.cache
def bazel_major(binary: str) -> int:
    """The major version of a Bazel binary; Debian's 4.2.3 says `bazel no_version`, which reads as 4."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=300).stdout
    match = re.search(r"bazel (\d+)\.", out)
    return int(match.group(1)) if match else 4


def workspace_mode_rc(binary: str) -> str:
    """The rc lines that make `binary` build a WORKSPACE-only sample offline ('' for Bazel < 7)."""
    if bazel_major(binary) < 7:
        return ""
    lines = ["common --noenable_bzlmod", "common --enable_workspace"]
    lines += [f"common --override_repository={name}={path}" for name, path in DEBIAN_RULES.items()
              if Path(path).is_dir()]
    return "".join(line + "\n" for line in lines)


def runfiles_root() -> Path:
    """The runfiles folder holding every repository (main workspace = cwd of a test)."""
    return Path.cwd().parent


def runfiles_repo(name: str) -> Path:
    """Repository `name` in this test's runfiles: under its name (WORKSPACE), or under its canonical name ending
    in `~name` / `+name` (Bzlmod: a module extension's repository, e.g. `_main~mlenv~pypi`)."""
    root = runfiles_root()
    for candidate in (root / name, *sorted(root.glob(f"*~{name}")), *sorted(root.glob(f"*+{name}"))):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"repository @{name} is not in the runfiles at {root}; add a file of it to the test's data")


@dataclass
class SampleWorkspace:
    root: Path
    output_root: Path
    bazel_binary: str
    interpreter: Path | None = None

    @classmethod
    def create(cls, root: Path, copy: dict[str, str] | None = None, workspace_name: str = "sample",
               reuse_interpreter: bool = True) -> SampleWorkspace:
        """reuse_interpreter: @mlenv_python is this build's (--override_repository), so a sample that declares
        python_interpreter() downloads nothing; only the interpreter's own test fetches it for real."""
        root.mkdir(parents=True, exist_ok=True)
        for name in STANDINS:
            shutil.copytree(runfiles_repo(name), root / "third_party/bazel_standins" / name, symlinks=False)
        for dest, src in (copy or {}).items():
            source = Path.cwd() / src
            if source.is_dir():
                shutil.copytree(source, root / dest, symlinks=False)
            else:
                (root / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, root / dest)
        (root / "WORKSPACE").write_text(f'workspace(name = "{workspace_name}")\n' + WORKSPACE_HEADER)
        (root / ".bazelignore").write_text("third_party/bazel_standins\n")
        try:
            interpreter = runfiles_repo("mlenv_python") / "python3"
        except FileNotFoundError:
            interpreter = None
        reused = interpreter.resolve().parent if reuse_interpreter and interpreter and interpreter.exists() else None
        binary = find_bazel()
        output_root = root.parent / (root.name + "-output")
        rc = workspace_mode_rc(binary)
        if rc:
            output_root.mkdir(parents=True, exist_ok=True)
            (output_root / "workspace_mode.bazelrc").write_text(rc)
        return cls(root, output_root, binary, reused)

    @property
    def startup(self) -> list[str]:
        """Startup options every Bazel command on this sample takes: its own output root, and for Bazel 7+ the
        rc file that keeps it in WORKSPACE mode."""
        rc = self.output_root / "workspace_mode.bazelrc"
        return [f"--output_user_root={self.output_root}", *([f"--bazelrc={rc}"] if rc.exists() else [])]

    def copy_in(self, relative: str) -> None:
        """Copies a file or folder of this test's workspace (its runfiles) to the same place in the sample."""
        source, target = Path.cwd() / relative, self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy(source, target)  # keeps the executable bit (tools/workspace_status.sh)

    def write(self, path: str, text: str) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def append(self, path: str, text: str) -> None:
        with open(self.root / path, "a") as fh:
            fh.write(text)

    def bazel(self, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "BAZEL_", "RUNFILES", "XML_"))}
        full_env.update(env or {})
        if self.interpreter and args and args[0] in BUILD_COMMANDS:
            args = (args[0], f"--override_repository=mlenv_python={self.interpreter}", *args[1:])
        return subprocess.run(
            [self.bazel_binary, *self.startup, *args],
            cwd=self.root, env=full_env, capture_output=True, text=True, timeout=timeout)

    def shutdown(self) -> None:
        subprocess.run([self.bazel_binary, *self.startup, "shutdown"],
                       cwd=self.root, capture_output=True, timeout=120)
