"""Build a model bundle (the action behind ml_model_bundle; also usable by hand).

Weights come from either
  --export-dir DIR                  an engine export folder (e.g. from ml_trained_model or a training run), or
  --mlflow-run ID --mlflow-sha256 D  the `export` artifacts of an MLflow run, pinned by their digest
                                     (MLFLOW_TRACKING_URI says which server; a wrong pin fails and prints
                                     the digest that was found).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ml.engine.redact import redact
from ml.serving import bundle


def _status(path: Path | None) -> dict[str, str]:
    values = {}
    if path and path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            values[key] = value.strip()
    return values


def fetch_mlflow_export(run_id: str, pinned: str, into: Path) -> tuple[Path, dict]:
    import mlflow

    client = mlflow.MlflowClient()
    try:
        local = Path(client.download_artifacts(run_id, "export", str(into)))
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types
        raise bundle.BundleError(f"cannot fetch the export of MLflow run {run_id} from "
                                 f"{redact(mlflow.get_tracking_uri())}: {redact(exc)}") from exc
    found = bundle.export_digest(local)
    if found != pinned:
        raise bundle.BundleError(f"MLflow run {run_id}: its export has digest {found}, but the bundle pins {pinned}. "
                                 f"If this run is the one you mean, pin it: mlflow_sha256 = \"{found}\"")
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
    return local, {"run_id": run_id, "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--export-dir", type=Path)
    source.add_argument("--mlflow-run")
    parser.add_argument("--mlflow-sha256", help="digest of the run's export folder (with --mlflow-run)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--version")
    parser.add_argument("--label", default="unknown")
    parser.add_argument("--lock-digest-file", type=Path)
    parser.add_argument("--status-file", type=Path,
                        help="Bazel's volatile-status.txt (GIT_COMMIT) or stable-status.txt (STABLE_GIT_COMMIT)")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--formats", type=lambda v: [f for f in v.split(",") if f],
                        help="comma-separated artifact formats to carry, e.g. torchscript,onnx (default: every format "
                             "the export wrote or tried to write)")
    parser.add_argument("--default-format", help="the artifact a server runs unless its --runtime says otherwise "
                                                 "(default: the export's main format)")
    parser.add_argument("--sign-key", type=Path,
                        help="Ed25519 private key (PEM): also write bundle.json.sig, for servers run with "
                             "--bundle-public-key")
    parser.add_argument("--new-signing-key", nargs=2, type=Path, metavar=("PRIVATE_PEM", "PUBLIC_PEM"),
                        help="write a new Ed25519 key pair and exit (the private key for CI, the public one for servers)")
    args = parser.parse_args(argv)
    if args.new_signing_key:
        try:
            bundle.generate_signing_key(*args.new_signing_key)
        except FileExistsError:
            parser.error(f"{args.new_signing_key[0]} exists; a new key never overwrites an old one")
        print(f"wrote {args.new_signing_key[0]} (private: keep it with CI) and {args.new_signing_key[1]} (public: "
              f"serve with --bundle-public-key {args.new_signing_key[1]})")
        return 0
    missing = [flag for flag, value in (("--export-dir or --mlflow-run", args.export_dir or args.mlflow_run),
                                        ("--out", args.out), ("--name", args.name), ("--version", args.version))
               if not value]
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    lock = args.lock_digest_file.read_text().strip() if args.lock_digest_file else "unknown"
    status = _status(args.status_file)
    commit = status.get("GIT_COMMIT") or status.get("STABLE_GIT_COMMIT", "unknown")
    staging = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.mlflow_run:
                if not args.mlflow_sha256:
                    raise bundle.BundleError("--mlflow-run needs --mlflow-sha256 (bundles only take pinned weights)")
                export, mlflow_info = fetch_mlflow_export(args.mlflow_run, args.mlflow_sha256, Path(tmp))
            else:
                export = args.export_dir
                # A build-time training run (ml_trained_model) leaves result.json; its MLflow store was temporary,
                # so only its metrics are worth recording.
                result = export / "result.json"
                mlflow_info = ({"metrics": {f"eval/{k}": v for k, v in json.loads(result.read_text())["eval_metrics"].items()}}
                               if result.is_file() else {})
            if args.out.exists() or args.out.is_symlink():
                bundle.check_replaceable(args.out)  # refused before any work: never someone else's folder
            # Written and checked next to --out, then renamed into place: a bundle that fails its check never
            # appears at --out, and a good bundle already there stays until its replacement has passed.
            args.out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}."))
            staged = staging / "bundle"
            bundle.write_bundle(export, staged, name=args.name, version=args.version, label=args.label,
                                lock_digest=lock, git_commit=commit, mlflow=mlflow_info,
                                max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                                formats=args.formats, default_format=args.default_format)
            if args.sign_key:
                bundle.sign(staged, args.sign_key)
            if args.out.exists():
                shutil.rmtree(args.out)
            os.replace(staged, args.out)
    except bundle.BundleError as exc:
        print(f"ml_model_bundle: {exc}", file=sys.stderr)
        return 1
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
