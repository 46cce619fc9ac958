"""What changed: `git diff <base>` (working tree, committed or not) plus untracked files, as typed changes.

A rename is reported as one Change with both paths, so selection treats the old path like a deletion and the
new one like an addition ("a renamed file selects both").
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Change", "ChangesError", "changed_files", "parse_name_status"]


class ChangesError(RuntimeError):
    """git could not tell what changed (bad base revision, not a repository)."""


@dataclass(frozen=True)
class Change:
    """One changed path.

    status: "A" added, "M" modified, "D" deleted, "R" renamed (path = new path, old_path = former path);
      copies ("C") are reported as additions and type changes ("T") as modifications.
    path: the path relative to the workspace root (after the change; for "D" the deleted path).
    old_path: for "R", the path before the change; None otherwise.
    """

    status: str
    path: str
    old_path: str | None = None

    def paths_before(self) -> list[str]:
        """Paths whose former dependents must be selected (they no longer exist, or exist elsewhere)."""
        if self.status == "D":
            return [self.path]
        if self.status == "R" and self.old_path:
            return [self.old_path]
        return []

    def paths_after(self) -> list[str]:
        """Paths that exist in the working tree after the change."""
        return [] if self.status == "D" else [self.path]

    def describe(self) -> str:
        if self.status == "R":
            return f"renamed {self.old_path} -> {self.path}"
        return {"A": "added", "M": "modified", "D": "deleted"}.get(self.status, self.status) + " " + self.path


def parse_name_status(text: str) -> list[Change]:
    """Parses `git diff --name-status -z -M` output."""
    fields = text.split("\0")
    changes, i = [], 0
    while i < len(fields) and fields[i]:
        code = fields[i]
        kind = code[0]
        if kind in "RC":
            old, new = fields[i + 1], fields[i + 2]
            i += 3
            changes.append(Change("R", new, old) if kind == "R" else Change("A", new))
        else:
            path = fields[i + 1]
            i += 2
            changes.append(Change({"T": "M", "U": "M"}.get(kind, kind), path))
    return changes


def _git(workspace: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChangesError(f"git {' '.join(args)} failed in {workspace}: {proc.stderr.strip()}")
    return proc.stdout


def changed_files(workspace: Path, base: str) -> list[Change]:
    """Changes between `base` and the working tree (tracked files) plus untracked, non-ignored files."""
    try:
        _git(workspace, "rev-parse", "--verify", "--quiet", base + "^{commit}")
    except ChangesError:
        raise ChangesError(f"--base {base!r} is not a commit here; fetch it first (e.g. `git fetch origin main`, "
                           f"then --base origin/main)") from None
    changes = parse_name_status(_git(workspace, "diff", "--name-status", "-z", "-M", base))
    untracked = [p for p in _git(workspace, "ls-files", "-z", "--others", "--exclude-standard").split("\0") if p]
    changes += [Change("A", path) for path in untracked]
    return sorted(changes, key=lambda c: (c.path, c.status))
