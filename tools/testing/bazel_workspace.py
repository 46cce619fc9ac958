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
"""

from __future__ import annotations

import os
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


def runfiles_root() -> Path:
    """The runfiles folder holding every repository (main workspace = cwd of a test)."""
    return Path.cwd().parent


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
        runfiles = runfiles_root()
        for name in STANDINS:
            shutil.copytree(runfiles / name, root / "third_party/bazel_standins" / name, symlinks=False)
        for dest, src in (copy or {}).items():
            source = Path.cwd() / src
            if source.is_dir():
                shutil.copytree(source, root / dest, symlinks=False)
            else:
                (root / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, root / dest)
        (root / "WORKSPACE").write_text(f'workspace(name = "{workspace_name}")\n' + WORKSPACE_HEADER)
        (root / ".bazelignore").write_text("third_party/bazel_standins\n")
        interpreter = runfiles_root() / "mlenv_python" / "python3"
        reused = interpreter.resolve().parent if reuse_interpreter and interpreter.exists() else None
        return cls(root, root.parent / (root.name + "-output"), find_bazel(), reused)

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
            [self.bazel_binary, f"--output_user_root={self.output_root}", *args],
            cwd=self.root, env=full_env, capture_output=True, text=True, timeout=timeout)

    def shutdown(self) -> None:
        subprocess.run([self.bazel_binary, f"--output_user_root={self.output_root}", "shutdown"],
                       cwd=self.root, capture_output=True, timeout=120)
