"""`bazel run //<pkg>:<bundle>.check`: verify a bundle, and replay its golden batch through every artifact.

Checks every file's hash (and, with --public-key, the signature), then runs the golden inputs through each
artifact the bundle carries (TorchScript, ONNX, ...) with the runtime a server would use for it.

    tools/bazel run //ml/homefeed:bundle.check                      # on CPU
    tools/bazel run --config=cuda //ml/homefeed:bundle.check -- --device cuda --golden-atol 1e-4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ml.serving import bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_bundle", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the bundle folder")
    parser.add_argument("--device", default="cpu", help="replay the golden batch on this device (cpu, cuda, cuda:N)")
    parser.add_argument("--golden-atol", type=float, help="tolerance overriding the bundle's (other devices round "
                                                          "differently from the CPU that wrote the golden outputs)")
    parser.add_argument("--runtime", help="replay only the artifact of this format (torchscript, onnx, ...); default: all")
    parser.add_argument("--public-key", type=Path, help="Ed25519 public key (PEM): also check bundle.json.sig")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        device = str(bundle.resolve_device(args.device))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        b = bundle.verify(args.bundle, public_key=args.public_key)
        # Every artifact the bundle carries, each by the runtime a server would run it with.
        default = b.manifest.get("artifact_format", "torchscript")
        formats = ([args.runtime] if args.runtime else
                   [default, *sorted(set(b.manifest.get("artifacts", {})) - {default})])
        worst = {fmt: bundle.check_golden(b, bundle.load_model(b, device, fmt=fmt), atol=args.golden_atol)
                 for fmt in formats}
    except (bundle.BundleError, ValueError) as exc:  # ValueError: the runtime cannot use --device
        print(f"bundle check FAILED: {exc}", file=sys.stderr)
        return 1
    sig = b.signature
    print(f"bundle {b.name} version {b.version}: OK\n"
          f"  files:   {len(b.manifest['files'])} verified (sha256)"
          f"{', signature verified (Ed25519)' if args.public_key else ''}\n"
          f"  inputs:  {', '.join(t['name'] + ':' + t['dtype'] + str(t['shape']) for t in sig['inputs'])}\n"
          f"  outputs: {', '.join(t['name'] + ':' + t['dtype'] + str(t['shape']) for t in sig['outputs'])}\n"
          f"  golden:  max |diff| {', '.join(f'{fmt} {diff:.3g}' for fmt, diff in worst.items())} on {device} "
          f"(default artifact: {default}; tolerance "
          f"{b.manifest['golden']['atol'] if args.golden_atol is None else args.golden_atol})\n"
          f"  built by {b.manifest['built_by']} at commit {b.manifest['git_commit']}, lock {b.manifest['lock_digest']}\n"
          f"  mlflow:  {json.dumps(b.manifest.get('mlflow', {}), sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
