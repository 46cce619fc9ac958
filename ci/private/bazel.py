"""A small Bazel client for presubmit: queries (read-only) and the build/test commands it runs.

Every command goes through `Bazel.command()`, so a dry run prints exactly what a real run executes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Bazel", "BazelError"]

# Variables of the process that ran us (`bazel run`, a test) that must not leak into the Bazel we start: the
# python stub's PYTHONPATH/RUNFILES would reach repository rules, and TEST_* would confuse nested tests.
_SCRUBBED_PREFIXES = ("RUNFILES", "PYTHON", "TEST_", "XML_OUTPUT", "BUILD_WORKSPACE_DIRECTORY", "BUILD_WORKING_DIRECTORY")


class BazelError(RuntimeError):
    """A Bazel query or info command failed; the message carries Bazel's own error output."""


@dataclass
class Bazel:
    """Runs `binary` (tools/bazel, or a bare Bazel in tests) in `workspace`.

    startup: startup options placed before the command (tests pass their own --output_user_root).
    """

    workspace: Path
    binary: str
    startup: list[str] = field(default_factory=list)

    def command(self, verb: str, *args: str) -> list[str]:
        return [self.binary, *self.startup, verb, *args]

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}

    def run(self, argv: list[str], capture: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.workspace, env=self.env(), text=True,
                              capture_output=capture)

    def query(self, expression: str, *flags: str, keep_going: bool = False) -> str:
        """`bazel query` of `expression` (passed through a file: seed sets can be long); stdout."""
        with tempfile.NamedTemporaryFile("w", suffix=".query", delete=False) as fh:
            fh.write(expression)
        try:
            extra = ["--keep_going"] if keep_going else []
            proc = self.run(self.command("query", f"--query_file={fh.name}", *extra, *flags), capture=True)
        finally:
            os.unlink(fh.name)
        if proc.returncode not in ((0, 3) if keep_going else (0,)):
            raise BazelError(f"bazel query {expression[:300]!r} failed (exit {proc.returncode}):\n"
                             f"{_tail(proc.stderr)}")
        return proc.stdout

    def labels(self, expression: str, *flags: str, keep_going: bool = False) -> list[str]:
        return [line for line in self.query(expression, *flags, keep_going=keep_going).splitlines() if line]

    def info(self, key: str, *flags: str) -> str:
        proc = self.run(self.command("info", *flags, key), capture=True)
        if proc.returncode != 0:
            raise BazelError(f"bazel info {key} failed (exit {proc.returncode}):\n{_tail(proc.stderr)}")
        return proc.stdout.strip()

    @staticmethod
    def render(argv: list[str]) -> str:
        return shlex.join(argv)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
