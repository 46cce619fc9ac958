"""Implementation of //third_party/debian:layer.bzl: one deterministic layer tar from locked .deb files."""

DebianLayerInfo = provider(
    doc = "A root-filesystem layer built from Debian packages (what an image rule stacks first).",
    fields = {
        "layer": "File: the uncompressed layer tar (sorted entries, mtime 0, uid/gid 0, no user/group names).",
        "diff_id": "File: one line `sha256:<hex>`, the sha256 of `layer` (the OCI config's rootfs.diff_ids entry).",
        "interpreter": "string: absolute path of the Python interpreter inside the layer, e.g. /usr/bin/python3.11.",
        "packages": "File: packages.json of the repository the layer was built from (name, version, sha256 of each .deb).",
    },
)

def _label_str(label):
    """`//pkg:name` under every Bazel version (Bazel 7 writes `@//pkg:name` for str(label))."""
    return "%s//%s:%s" % ("@" + label.workspace_name if label.workspace_name else "", label.package, label.name)

def _debian_layer_impl(ctx):
    if ctx.attr.interpreter and not ctx.attr.interpreter.startswith("/"):
        fail("debian_base_layer(%s): interpreter must be an absolute path inside the layer, got %r; e.g. \"/usr/bin/python3.11\"" % (
            _label_str(ctx.label),
            ctx.attr.interpreter,
        ))
    layer = ctx.actions.declare_file(ctx.label.name + ".tar")
    diff_id = ctx.actions.declare_file(ctx.label.name + ".tar.sha256")
    args = ctx.actions.args()
    args.add("--packages", ctx.file.packages)
    args.add("--out", layer)
    args.add("--diff-id", diff_id)
    if ctx.attr.interpreter:
        args.add("--interpreter", ctx.attr.interpreter)
    ctx.actions.run(
        executable = ctx.executable._build_layer,
        arguments = [args],
        inputs = [ctx.file.packages] + ctx.files.debs,
        outputs = [layer, diff_id],
        mnemonic = "DebianLayer",
        progress_message = "Assembling the Debian layer %s" % _label_str(ctx.label),
    )
    return [
        DefaultInfo(files = depset([layer, diff_id]), runfiles = ctx.runfiles(files = [layer, diff_id])),
        DebianLayerInfo(layer = layer, diff_id = diff_id, interpreter = ctx.attr.interpreter, packages = ctx.file.packages),
        OutputGroupInfo(layer = depset([layer]), diff_id = depset([diff_id])),
    ]

debian_layer = rule(
    implementation = _debian_layer_impl,
    doc = """Merges the .deb files of a `debian_packages` repository into one deterministic layer tar.

Outputs `<name>.tar` and `<name>.tar.sha256`; returns DebianLayerInfo. Use the `debian_base_layer` macro.""",
    attrs = {
        "debs": attr.label(mandatory = True, allow_files = [".deb"], doc = "the .deb files, e.g. @debian_bookworm//:debs"),
        "interpreter": attr.string(doc = "absolute path the layer must hold as a file (\"\" for none)"),
        "packages": attr.label(
            mandatory = True,
            allow_single_file = [".json"],
            doc = "packages.json of the same repository: which file is which package",
        ),
        "_build_layer": attr.label(
            default = "//third_party/debian/private:build_layer",
            executable = True,
            cfg = "exec",
        ),
    },
)

def debian_base_layer(name, repository = "@debian_bookworm", interpreter = "/usr/bin/python3.11", **kwargs):
    """The base layer of our images: every package of a Debian lock merged into one tar.

    Outputs `<name>.tar` (the layer) and `<name>.tar.sha256` (its diff_id), and returns DebianLayerInfo.

    Args:
      name: target name.
      repository: the repository of .deb files (a `debian_packages` rule; default @debian_bookworm).
      interpreter: a path the layer must hold as a regular file, reported in DebianLayerInfo.interpreter;
        "" for a layer without Python. Default /usr/bin/python3.11.
      **kwargs: common attributes (visibility, tags, ...).
    """
    debian_layer(
        name = name,
        debs = repository + "//:debs",
        packages = repository + "//:packages.json",
        interpreter = interpreter,
        **kwargs
    )
