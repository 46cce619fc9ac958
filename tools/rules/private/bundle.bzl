"""Implementation of //tools/rules:bundle.bzl: build-time trained models and deployable model bundles."""

load("//tools/rules/private:labels.bzl", "label_str")
load(":providers.bzl", "ModelBundleInfo")

def _trained_model_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        inputs = [],
        tools = [ctx.attr.trainer[DefaultInfo].files_to_run],
        command = """set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" HOME="$work"
"$1" "${@:3}" --set "run_dir=$work/run" --set run_name=build > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
cp -R "$work/run/export/." "$2/"  # a SavedModel export holds a folder
cp "$work/run/metrics.json" "$2/result.json"  # no run id or temp path: same weights, same bytes
""",
        arguments = [ctx.executable.trainer.path, out.path] + ctx.attr.args_,
        mnemonic = "TrainModel",
        progress_message = "Training %s (%s)" % (label_str(ctx.label), label_str(ctx.attr.trainer.label)),
        use_default_shell_env = False,
        env = {"PATH": "/usr/bin:/bin"},
    )
    return [DefaultInfo(files = depset([out]))]

trained_model = rule(
    implementation = _trained_model_impl,
    attrs = {
        "args_": attr.string_list(),
        "trainer": attr.label(mandatory = True, executable = True, cfg = "exec"),
    },
)

def ml_trained_model(name, trainer, args = [], **kwargs):
    """Trains `trainer` as a build action and outputs its export folder (model, signature, golden batch).

    For small, deterministic models that tests and default bundles need without a tracking server.
    """
    trained_model(name = name, trainer = trainer, args_ = args, **kwargs)

def _bundle_impl(ctx):
    if not ctx.attr.model_name:
        fail("ml_model_bundle(%s): model_name is empty; name the model as clients will address it" % label_str(ctx.label))
    if ctx.attr.export and ctx.attr.mlflow_run:
        fail("ml_model_bundle(%s): give either export (a label) or mlflow_run, not both" % label_str(ctx.label))
    if not ctx.attr.export and not ctx.attr.mlflow_run:
        fail("ml_model_bundle(%s): no weights: set export = \":<trained model>\" or mlflow_run + mlflow_sha256" % label_str(ctx.label))
    if ctx.attr.mlflow_run and not ctx.attr.mlflow_sha256.startswith("sha256:"):
        fail("ml_model_bundle(%s): mlflow_run %r needs mlflow_sha256 = \"sha256:...\" (the digest of its export folder; a build with a wrong pin prints the right one)" % (label_str(ctx.label), ctx.attr.mlflow_run))
    if ctx.attr.max_batch_size < 1:
        fail("ml_model_bundle(%s): max_batch_size must be >= 1, got %d" % (label_str(ctx.label), ctx.attr.max_batch_size))
    out = ctx.actions.declare_directory(ctx.label.name)
    args = ctx.actions.args()
    inputs = [ctx.file._lock_digest, ctx.version_file]
    if ctx.attr.export:
        args.add("--export-dir", ctx.file.export.path)
        inputs.append(ctx.file.export)
    else:
        args.add("--mlflow-run", ctx.attr.mlflow_run)
        args.add("--mlflow-sha256", ctx.attr.mlflow_sha256)
    args.add("--out", out.path)
    args.add("--name", ctx.attr.model_name)
    args.add("--version", ctx.attr.version)
    args.add("--label", label_str(ctx.label))
    args.add("--lock-digest-file", ctx.file._lock_digest.path)

    # The volatile status: its GIT_COMMIT never triggers a rebuild (see tools/workspace_status.sh).
    args.add("--status-file", ctx.version_file.path)
    args.add("--max-batch-size", str(ctx.attr.max_batch_size))
    args.add("--max-queue-delay-us", str(ctx.attr.max_queue_delay_us))
    if ctx.attr.formats:
        args.add("--formats", ",".join(ctx.attr.formats))
    if ctx.attr.default_format:
        if ctx.attr.formats and ctx.attr.default_format not in ctx.attr.formats:
            fail("ml_model_bundle(%s): default_format %r is not in formats %r" % (label_str(ctx.label), ctx.attr.default_format, ctx.attr.formats))
        args.add("--default-format", ctx.attr.default_format)
    ctx.actions.run(
        executable = ctx.executable._make_bundle,
        arguments = [args],
        inputs = inputs,
        outputs = [out],
        mnemonic = "ModelBundle",
        progress_message = "Bundling %s" % label_str(ctx.label),
        env = {"MLFLOW_TRACKING_URI": ctx.attr.mlflow_tracking_uri} if ctx.attr.mlflow_tracking_uri else {},
    )
    return [
        DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out])),
        ModelBundleInfo(dir = out, model_name = ctx.attr.model_name, version = ctx.attr.version),
    ]

model_bundle = rule(
    implementation = _bundle_impl,
    attrs = {
        "default_format": attr.string(doc = "the artifact servers run unless their --runtime says otherwise (default: the export's main format)"),
        "export": attr.label(allow_single_file = True, doc = "an export folder (ml_trained_model or any engine export)"),
        "formats": attr.string_list(doc = "artifact formats to carry, e.g. [\"torchscript\", \"onnx\"] (default: all the export wrote or tried)"),
        "max_batch_size": attr.int(default = 256),
        "max_queue_delay_us": attr.int(default = 2000),
        "mlflow_run": attr.string(doc = "MLflow run id whose `export` artifacts are bundled"),
        "mlflow_sha256": attr.string(doc = "digest of that export folder (sha256:...)"),
        "mlflow_tracking_uri": attr.string(doc = "MLflow server for mlflow_run (default: $MLFLOW_TRACKING_URI)"),
        "model_name": attr.string(mandatory = True),
        "version": attr.string(default = "1"),
        "_lock_digest": attr.label(default = "@pypi//:lock_digest.txt", allow_single_file = True),
        "_make_bundle": attr.label(default = "//ml/serving:make_bundle", executable = True, cfg = "exec"),
    },
)

def ml_model_bundle(
        name,
        model_name,
        version = "1",
        export = None,
        mlflow_run = None,
        mlflow_sha256 = "",
        mlflow_tracking_uri = "",
        max_batch_size = 256,
        max_queue_delay_us = 2000,
        formats = [],
        default_format = "",
        **kwargs):
    """A deployable bundle; also `<name>.check` (bazel run) that verifies it. See docs/rules.md."""
    model_bundle(
        name = name,
        model_name = model_name,
        version = version,
        export = export,
        mlflow_run = mlflow_run or "",
        mlflow_sha256 = mlflow_sha256,
        mlflow_tracking_uri = mlflow_tracking_uri,
        max_batch_size = max_batch_size,
        max_queue_delay_us = max_queue_delay_us,
        formats = formats,
        default_format = default_format,
        **kwargs
    )
    native.py_binary(
        name = name + ".check",
        srcs = ["//ml/serving:check_bundle.py"],
        main = "//ml/serving:check_bundle.py",
        args = ["$(rootpath :%s)" % name],
        data = [":" + name],
        deps = ["//ml/serving:bundle"],
        python_version = "PY3",
        tags = kwargs.get("tags", []),
    )
