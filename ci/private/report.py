"""JUnit XML of every test presubmit ran, gathered in one folder, and the short summary it prints."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ci.junit_summary import summarize

__all__ = ["LaneResult", "Report", "gather_junit"]


@dataclass
class LaneResult:
    """How one lane went: Bazel's exit code and the command (already rendered)."""

    name: str
    command: str
    exit_code: int
    tests: list[str]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def gather_junit(testlogs: Path, tests: list[str], dest: Path) -> list[str]:
    """Copies <testlogs>/<pkg>/<name>/**/test.xml of `tests` under dest/<pkg>/<name>/; returns tests without XML."""
    missing = []
    for label in tests:
        relative = label.lstrip("/").replace(":", "/")
        source = testlogs / relative
        found = sorted(source.rglob("test.xml")) if source.is_dir() else []
        if not found:
            missing.append(label)
        for xml in found:
            target = dest / relative / xml.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(xml, target)
    return missing


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.lines.append(f"== {title}")

    def add(self, line: str) -> None:
        self.lines.append(line)

    def junit_totals(self, folder: Path) -> str:
        passed, failed, skipped, failures = summarize(folder) if folder.is_dir() else (0, 0, 0, [])
        for line in failures:
            self.add(f"  FAILED {line}")
        return f"{passed} passed, {failed} failed, {skipped} skipped"

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
