"""`bazel run //<pkg>:<bundle>.check`: verify a bundle's hashes and signature, and replay its golden batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ml.serving import bundle


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: check_bundle <bundle folder>", file=sys.stderr)
        return 2
    try:
        b = bundle.verify(Path(args[0]))
        worst = bundle.check_golden(b)
    except bundle.BundleError as exc:
        print(f"bundle check FAILED: {exc}", file=sys.stderr)
        return 1
    sig = b.signature
    print(f"bundle {b.name} version {b.version}: OK\n"
          f"  files:   {len(b.manifest['files'])} verified (sha256)\n"
          f"  inputs:  {', '.join(t['name'] + ':' + t['dtype'] + str(t['shape']) for t in sig['inputs'])}\n"
          f"  outputs: {', '.join(t['name'] + ':' + t['dtype'] + str(t['shape']) for t in sig['outputs'])}\n"
          f"  golden:  max |diff| {worst:.3g} (tolerance {b.manifest['golden']['atol']})\n"
          f"  built by {b.manifest['built_by']} at commit {b.manifest['git_commit']}, lock {b.manifest['lock_digest']}\n"
          f"  mlflow:  {json.dumps(b.manifest.get('mlflow', {}), sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
