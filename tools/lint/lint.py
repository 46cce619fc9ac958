"""Lint of the workspace: buildifier (format check) on Starlark files, ruff on Python.

    tools/bazel run //ci:fix          # rewrites what these checks flag (buildifier -mode=fix, ruff --fix)

Files are the ones git knows (tracked, or untracked and not ignored), so bazel-* symlinks, .mlenv and other
local state are never linted. Only formatting is checked for Starlark (`-lint=off`); ruff applies ruff.toml.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FIX_COMMAND", "LintResult", "Linter"]

FIX_COMMAND = "tools/bazel run //ci:fix"
_STARLARK_NAMES = ("BUILD", "BUILD.bazel", "WORKSPACE", "WORKSPACE.bazel")
# BUILD file templates (tools/new/templates): not packages of this workspace, formatted like BUILD files.
_STARLARK_TEMPLATES = ("BUILD.bazel.tmpl",)


@dataclass
class LintResult:
    """One tool's verdict: ok, the command that ran, and its output (what to fix)."""

    tool: str
    ok: bool
    command: list[str]
    output: str


@dataclass
class Linter:
    """buildifier and ruff (paths to the pinned binaries) over the git-known files of `workspace`."""

    workspace: Path
    buildifier: str
    ruff: str

    def starlark_files(self) -> list[str]:
        return [p for p in self._git_files()
                if Path(p).name in _STARLARK_NAMES + _STARLARK_TEMPLATES or p.endswith(".bzl")]

    def _git_files(self) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=self.workspace, capture_output=True, text=True, check=True).stdout
        return sorted({p for p in out.split("\0") if p and (self.workspace / p).is_file()})

    def check_commands(self) -> list[tuple[str, list[str]]]:
        return [
            ("buildifier", [self.buildifier, "-mode=check", "-lint=off", *self.starlark_files()]),
            ("ruff", [self.ruff, "check", "--no-cache", "--force-exclude", "."]),
        ]

    def fix_commands(self) -> list[tuple[str, list[str]]]:
        return [
            ("buildifier", [self.buildifier, "-mode=fix", "-lint=off", *self.starlark_files()]),
            ("ruff", [self.ruff, "check", "--no-cache", "--force-exclude", "--fix", "."]),
        ]

    def run(self, commands: list[tuple[str, list[str]]]) -> list[LintResult]:
        results = []
        for tool, argv in commands:
            proc = subprocess.run(argv, cwd=self.workspace, capture_output=True, text=True)
            output = (proc.stdout + proc.stderr).strip()
            if tool == "buildifier" and proc.returncode != 0:
                output += f"\n(these files need formatting; fix: {FIX_COMMAND})"
            elif tool == "ruff" and proc.returncode != 0:
                output += f"\n(fix what ruff can: {FIX_COMMAND}; the rest by hand)"
            results.append(LintResult(tool, proc.returncode == 0, argv, output))
        return results

    def check(self) -> list[LintResult]:
        return self.run(self.check_commands())

    def fix(self) -> list[LintResult]:
        return self.run(self.fix_commands())
