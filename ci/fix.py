"""`tools/bazel run //ci:fix`: rewrites what presubmit's lint flags (buildifier -mode=fix, ruff check --fix)."""

import os
import sys
from pathlib import Path

from ci.presubmit import _runfiles_tool
from tools.lint.lint import Linter


def main() -> int:
    workspace = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")).resolve()
    linter = Linter(workspace, _runfiles_tool("mlenv_buildifier", "buildifier"), _runfiles_tool("mlenv_ruff", "ruff"))
    ok = True
    for result in linter.fix():
        ok &= result.ok
        print(f"{result.tool}: {'fixed' if result.ok else 'left issues to fix by hand'}")
        if result.output and not result.ok:
            print("  " + result.output.replace("\n", "\n  "))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
