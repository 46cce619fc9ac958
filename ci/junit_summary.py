"""Prints one line, 'N passed, N failed, N skipped', from the JUnit XML files Bazel wrote.

Used by .ci/run (and presubmit) so a CI page shows test cases, not just targets.
usage: python3 ci/junit_summary.py <bazel-testlogs folder>
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def summarize(testlogs: Path) -> tuple[int, int, int, list[str]]:
    passed = failed = skipped = 0
    failures = []
    for xml in sorted(testlogs.rglob("test.xml")):
        try:
            root = ET.parse(xml).getroot()  # noqa: S314 - Bazel's own test.xml
        except ET.ParseError:
            failed += 1
            failures.append(f"{xml.parent.relative_to(testlogs)}: unreadable test.xml (test crashed?)")
            continue
        for case in root.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
                failures.append(f"{xml.parent.relative_to(testlogs)}: {case.get('classname', '')}.{case.get('name')}")
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    return passed, failed, skipped, failures


def main() -> int:
    passed, failed, skipped, failures = summarize(Path(sys.argv[1]).resolve())
    for line in failures:
        print(f"FAILED {line}")
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
