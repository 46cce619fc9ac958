"""Implementation of //tools/rules:proto.bzl: .proto -> Python messages and gRPC stubs at build time."""

load("//tools/rules/private:labels.bzl", "label_str")

def _py_grpc_compile_impl(ctx):
    outputs = []
    private = []
    for src in ctx.files.srcs:
        if not src.path.endswith(".proto"):
            fail("py_grpc_library(%s): %s is not a .proto file" % (label_str(ctx.label), src.short_path))
        stem = src.basename[:-len(".proto")]
        for suffix in ["_pb2.py", "_pb2_grpc.py"]:
            out = ctx.actions.declare_file(stem + suffix, sibling = src)
            outputs.append(out)
            if suffix == "_pb2.py" and ctx.attr.private_descriptor_pool:
                private.append(out)
    args = ctx.actions.args()
    args.add("-I.")
    args.add("--python_out=" + ctx.bin_dir.path)
    args.add("--grpc_python_out=" + ctx.bin_dir.path)
    args.add_all(private, format_each = "--mlenv-private-pool=%s")
    args.add_all(ctx.files.srcs)
    ctx.actions.run(
        executable = ctx.executable._protoc,
        arguments = [args],
        inputs = ctx.files.srcs,
        outputs = outputs,
        mnemonic = "PyGrpcCompile",
        progress_message = "Compiling %s with grpcio-tools" % label_str(ctx.label),
    )
    return [DefaultInfo(files = depset(outputs))]

py_grpc_compile = rule(
    implementation = _py_grpc_compile_impl,
    doc = "Runs the locked grpcio-tools protoc on `srcs`; outputs <stem>_pb2.py and <stem>_pb2_grpc.py.",
    attrs = {
        "private_descriptor_pool": attr.bool(
            default = False,
            doc = "register messages in a pool of their own (another library in the process defines the same package)",
        ),
        "srcs": attr.label_list(allow_files = [".proto"], mandatory = True),
        "_protoc": attr.label(default = "//tools/rules/private:protoc", executable = True, cfg = "exec"),
    },
)

def py_grpc_library(name, srcs, deps = [], private_descriptor_pool = False, **kwargs):
    """A py_library of the messages and gRPC stubs generated from `srcs` (import them by package path).

    private_descriptor_pool: set when another library in the same process registers the same proto
    package (the Open Inference Protocol's `inference` package is also registered by tritonclient).
    """
    py_grpc_compile(
        name = name + "_gen",
        srcs = srcs,
        private_descriptor_pool = private_descriptor_pool,
        visibility = ["//visibility:private"],
    )
    native.py_library(
        name = name,
        srcs = [":" + name + "_gen"],
        deps = deps + ["@pypi//grpcio", "@pypi//protobuf"],
        **kwargs
    )
