"""Lists the skipped test cases in Bazel test.xml files (paths NUL-separated on stdin), for tools/bazel.

Bazel has no "skipped" status: a test whose cases pytest skipped shows as PASSED. After `tools/bazel test`, this
prints each skipped case of the tests that ran, with its reason, so a skip is never mistaken for a pass. Plain
standard-library Python: it runs on the host before any Bazel-built environment exists.
"""

import sys
import xml.etree.ElementTree as ET


def target_of(path: str) -> str:
    """//pkg:name for .../testlogs/pkg/name[/shard_i_of_n]/test.xml."""
    parts = path.split("/testlogs/", 1)[-1].split("/")[:-1]
    shard = ""
    if parts and parts[-1].startswith("shard_"):
        shard = " (" + parts.pop().replace("_", " ") + ")"
    return "//" + "/".join(parts[:-1]) + ":" + (parts[-1] if parts else "?") + shard


def main() -> int:
    found = []
    for raw in filter(None, sys.stdin.buffer.read().split(b"\0")):
        path = raw.decode(errors="replace")
        try:
            cases = list(ET.parse(path).getroot().iter("testcase"))  # noqa: S314 - Bazel's own test.xml
        except (OSError, ET.ParseError):
            continue
        for case in cases:
            skip = case.find("skipped")
            if skip is not None:
                found.append(f"  {target_of(path)}: {case.get('name')}: {skip.get('message') or skip.text or ''}")
    if found:
        print(f"tools/bazel: {len(found)} test case(s) SKIPPED, though their tests show as PASSED above "
              f"(--config=ci fails them):", *sorted(found), sep="\n", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
