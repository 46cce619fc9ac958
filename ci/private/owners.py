"""Who reviews a change: for every changed path, the OWNERS file nearest to it (its folder, then each parent
up to the workspace root).

Why files next to the code rather than a table in ci/presubmit.json: a project's owners travel with it (a new
project made by `tools/bazel run //tools/new:project` arrives with its OWNERS, written in the same rename as
the rest), and a move or a deletion of the folder takes them along. Format: one owner per line (a team such
as @org/team, a user name or an e-mail address); blank lines and `#` comments are ignored. A malformed file is
an error naming the file, the line and the fix, never silently skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = ["OWNERS_FILE", "OwnersError", "Review", "owners_of", "read_owners", "reviews"]

OWNERS_FILE = "OWNERS"
_OWNER = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9._-]+|@[A-Za-z0-9.-]+)?")


class OwnersError(ValueError):
    """An OWNERS file is malformed (the message names the file, the line and the fix)."""


@dataclass
class Review:
    """The owners (from `owners_file`, None when no OWNERS covers them) of the changed `paths`."""

    owners: tuple[str, ...]
    owners_file: str | None
    paths: list[str] = field(default_factory=list)


def read_owners(path: Path, relative: str) -> tuple[str, ...]:
    owners = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _OWNER.fullmatch(line):
            raise OwnersError(f"{relative}:{number}: {line!r} is not an owner; write one team (@org/team), user name "
                              "or e-mail address per line")
        owners.append(line)
    if not owners:
        raise OwnersError(f"{relative} names no owner; add one (e.g. @org/team) or delete the file")
    return tuple(owners)


def owners_of(workspace: Path, path: str) -> tuple[str | None, tuple[str, ...]]:
    """(the OWNERS file that covers `path`, its owners); (None, ()) when none does."""
    for folder in PurePosixPath(path).parents:
        candidate = folder / OWNERS_FILE
        if (workspace / candidate).is_file():
            return str(candidate), read_owners(workspace / candidate, str(candidate))
    return None, ()


def reviews(workspace: Path, paths: Iterable[str]) -> list[Review]:
    """Changed paths grouped by the OWNERS file that covers them (uncovered paths last, as one group)."""
    groups: dict[str | None, Review] = {}
    for path in paths:
        owners_file, owners = owners_of(workspace, path)
        groups.setdefault(owners_file, Review(owners, owners_file)).paths.append(path)
    return sorted(groups.values(), key=lambda r: (r.owners_file is None, r.owners_file or ""))
