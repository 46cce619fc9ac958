"""Implementation of //tools/rules:image.bzl: reproducible OCI images built without a daemon.

Ours, in the spirit of rules_oci (which lives on GitHub and cannot be fetched here). Every layer is an
uncompressed deterministic tar made by one action of tools/rules/private/oci.py, so each is cached on its
own: the environment layer is built once per lock for every image of every project; a code change rebuilds
only the app layer (and re-links the image, which hard-links blobs instead of copying gigabytes).

Layers, bottom to top: base (Debian packages pinned in //third_party/debian), environment (the whole
locked site-packages at /opt/mlenv), app (the project's runfiles at /app/runfiles), model (serve only:
the bundle at /models/<model>/<version>).
"""

load("//tools/rules/private:labels.bzl", "MAIN_REPO", "label_str", "repo_name")
load(":providers.bzl", "ImageLayerInfo", "ModelBundleInfo")

SITE_PACKAGES = "/opt/mlenv/site-packages"
RUNFILES = "/app/runfiles"
PYTHON = "/usr/bin/python3.11"
NONROOT = "65532:65532"

_OCI = "//tools/rules/private:oci"

def _layer_info(ctx, target, name):
    """ImageLayerInfo for a layer target, or one made from a plain .tar (digest computed by an action)."""
    if ImageLayerInfo in target:
        return target[ImageLayerInfo]
    tars = [f for f in target[DefaultInfo].files.to_list() if f.basename.endswith(".tar")]
    if len(tars) != 1:
        fail("%s: %s must provide ImageLayerInfo or exactly one .tar file, got %s" % (
            label_str(ctx.label),
            target.label,
            [f.basename for f in target[DefaultInfo].files.to_list()],
        ))
    digest = ctx.actions.declare_file("%s.%s.sha256" % (ctx.label.name, name))
    ctx.actions.run(
        executable = ctx.executable._oci,
        arguments = ["digest", "--tar", tars[0].path, "--out", digest.path],
        inputs = tars,
        outputs = [digest],
        mnemonic = "OciLayerDigest",
        progress_message = "Hashing layer %s" % target.label,
    )
    return ImageLayerInfo(tar = tars[0], digest = digest, name = name)

# ------------------------------------------------------------------------------------ environment layer

def _env_layer_impl(ctx):
    files = ctx.attr.env[DefaultInfo].default_runfiles.files.to_list()
    site = [f for f in files if f.basename == "site-packages"]
    if len(site) != 1:
        fail("%s: %s has no site-packages folder in its runfiles; point env at @pypi//:env" % (label_str(ctx.label), label_str(ctx.attr.env.label)))
    tar = ctx.actions.declare_file(ctx.label.name + ".tar")
    digest = ctx.actions.declare_file(ctx.label.name + ".sha256")
    args = ctx.actions.args()
    args.add("env-layer")
    args.add("--site-packages", site[0].path)
    args.add("--prefix", SITE_PACKAGES.rsplit("/", 1)[0])
    args.add("--extra", "opt/mlenv/lock_digest.txt=" + ctx.file.lock_digest.path)
    args.add("--extra", "opt/mlenv/manifest.json=" + ctx.file.manifest.path)
    args.add("--out", tar)
    args.add("--digest-out", digest)
    ctx.actions.run(
        executable = ctx.executable._oci,
        arguments = [args],
        # The site-packages folder is a source directory Bazel does not look into; the lock digest changes
        # with every relock, so it is what invalidates this action.
        inputs = [site[0], ctx.file.lock_digest, ctx.file.manifest],
        outputs = [tar, digest],
        mnemonic = "OciEnvLayer",
        progress_message = "Layering the locked environment (%s)" % label_str(ctx.label),
        env = {"PYTHONHASHSEED": "0"},
    )
    return [
        DefaultInfo(files = depset([tar, digest])),
        ImageLayerInfo(tar = tar, digest = digest, name = "environment"),
    ]

python_env_layer = rule(
    implementation = _env_layer_impl,
    doc = """The whole locked environment as ONE layer at /opt/mlenv/site-packages (byte code compiled for
that path, unchecked-hash), plus /opt/mlenv/{lock_digest.txt,manifest.json}. One per lock variant, shared by
every image of every project.

    python_env_layer(name = "env_layer")   # //third_party/pip:env_layer
""",
    attrs = {
        "env": attr.label(default = "@pypi//:env", doc = "the environment (a target whose runfiles hold site-packages)"),
        "lock_digest": attr.label(default = "@pypi//:lock_digest.txt", allow_single_file = True),
        "manifest": attr.label(default = "@pypi//:manifest.json", allow_single_file = True),
        "_oci": attr.label(default = _OCI, executable = True, cfg = "exec"),
    },
)

# ------------------------------------------------------------------------------------------ app layer

def _runfiles_dest(short_path):
    """Where a runfile lands in the image: under each repository's WORKSPACE name (the main one: `mlenv`),
    whatever Bazel calls it (Bzlmod: `_main`, `_main~mlenv~pypi`), so the layout and digest never depend on
    the Bazel version or mode."""
    if short_path.startswith("../"):
        repo, rest = short_path[3:].split("/", 1)
        return "%s/%s/%s" % (RUNFILES.lstrip("/"), repo_name(repo), rest)
    return "%s/%s/%s" % (RUNFILES.lstrip("/"), MAIN_REPO, short_path)

def _app_layer_impl(ctx):
    excluded = {}
    for target in ctx.attr.exclude:
        for f in target[DefaultInfo].files.to_list():
            excluded[f.path] = True
    launchers = {}
    runfiles = ctx.runfiles()
    for binary in ctx.attr.binaries:
        launchers[binary[DefaultInfo].files_to_run.executable.path] = True
        runfiles = runfiles.merge(binary[DefaultInfo].default_runfiles)
    runfiles = runfiles.merge(ctx.attr._gate[DefaultInfo].default_runfiles)
    runfiles = runfiles.merge(ctx.runfiles(files = ctx.files._pypi_files))
    lines = []
    inputs = []
    for f in runfiles.files.to_list():
        if f.path in excluded or f.path in launchers:
            continue
        repo = repo_name(f.owner.workspace_name) if f.owner else ""
        if repo in ctx.attr.skip_repos:
            continue  # the host interpreter wrapper: the image brings its own interpreter
        if repo == "pypi" and f.basename == "site-packages":
            continue  # the environment layer holds it
        lines.append("%s\tfile\t%s" % (_runfiles_dest(f.short_path), f.path))
        inputs.append(f)
    for path in runfiles.empty_filenames.to_list():
        lines.append("%s\tempty\t" % _runfiles_dest(path))
    for entry in runfiles.symlinks.to_list():
        lines.append("%s\tfile\t%s" % (_runfiles_dest(entry.path), entry.target_file.path))
        inputs.append(entry.target_file)
    lines.append("app/entrypoint.py\tfile\t%s" % ctx.file._entrypoint.path)
    inputs.append(ctx.file._entrypoint)
    lines.append("workspace\tmkdir\t0755\t%s" % NONROOT)
    lines.append("home/nonroot\tmkdir\t0755\t%s" % NONROOT)
    manifest = ctx.actions.declare_file(ctx.label.name + ".manifest")
    ctx.actions.write(manifest, "\n".join(sorted(lines)) + "\n")
    tar = ctx.actions.declare_file(ctx.label.name + ".tar")
    digest = ctx.actions.declare_file(ctx.label.name + ".sha256")
    ctx.actions.run(
        executable = ctx.executable._oci,
        arguments = ["files-layer", "--manifest", manifest.path, "--out", tar.path, "--digest-out", digest.path],
        inputs = inputs + [manifest],
        outputs = [tar, digest],
        mnemonic = "OciAppLayer",
        progress_message = "Layering the app of %s" % label_str(ctx.label),
    )
    return [
        DefaultInfo(files = depset([tar, digest])),
        ImageLayerInfo(tar = tar, digest = digest, name = "app"),
    ]

app_layer = rule(
    implementation = _app_layer_impl,
    doc = "The runfiles of `binaries` (one layer for all of them) at /app/runfiles, minus the environment and `exclude`.",
    attrs = {
        "binaries": attr.label_list(mandatory = True, doc = "py_binary targets whose code and data the images run"),
        "exclude": attr.label_list(doc = "targets whose files stay out of this layer (model bundles: they get their own)"),
        "skip_repos": attr.string_list(default = ["mlenv_python"], doc = "external repositories left out (the host interpreter)"),
        "_entrypoint": attr.label(default = "//tools/rules/private:image_entrypoint.py", allow_single_file = True),
        "_gate": attr.label(default = "//toolchains/cuda:gate"),
        "_oci": attr.label(default = _OCI, executable = True, cfg = "exec"),
        "_pypi_files": attr.label_list(
            default = ["@pypi//:lock_digest.txt", "@pypi//:manifest.json"],
            allow_files = True,
            doc = "the environment's identity, where the trainer and the gate look for it (runfiles/pypi/)",
        ),
    },
)

# ---------------------------------------------------------------------------------------- model layer

def _model_layer_impl(ctx):
    info = ctx.attr.bundle[ModelBundleInfo]
    manifest = ctx.actions.declare_file(ctx.label.name + ".manifest")
    ctx.actions.write(manifest, "models/%s/%s\tfile\t%s\n" % (info.model_name, info.version, info.dir.path))
    tar = ctx.actions.declare_file(ctx.label.name + ".tar")
    digest = ctx.actions.declare_file(ctx.label.name + ".sha256")
    ctx.actions.run(
        executable = ctx.executable._oci,
        arguments = ["files-layer", "--manifest", manifest.path, "--out", tar.path, "--digest-out", digest.path],
        inputs = [manifest, info.dir],
        outputs = [tar, digest],
        mnemonic = "OciModelLayer",
        progress_message = "Layering the model bundle %s" % label_str(ctx.attr.bundle.label),
    )
    return [
        DefaultInfo(files = depset([tar, digest])),
        ImageLayerInfo(tar = tar, digest = digest, name = "model"),
    ]

model_layer = rule(
    implementation = _model_layer_impl,
    doc = "A bundle (ml_model_bundle) at /models/<model_name>/<version>: the server's --repository layout.",
    attrs = {
        "bundle": attr.label(mandatory = True, providers = [ModelBundleInfo]),
        "_oci": attr.label(default = _OCI, executable = True, cfg = "exec"),
    },
)

# ---------------------------------------------------------------------------------------------- image

def _image_impl(ctx):
    if not ctx.attr.entrypoint and not ctx.attr.main:
        fail("%s: set main (the binary's main file, e.g. \"ml/homefeed/train.py\") or entrypoint" % label_str(ctx.label))
    entrypoint = ctx.attr.entrypoint
    if ctx.attr.main:
        if ctx.attr.binary:
            shorts = [f.short_path for f in ctx.attr.binary[DefaultInfo].default_runfiles.files.to_list()]
            if ctx.attr.main not in shorts:
                fail("%s: main %r is not in the runfiles of %s; py_binary's main is <name>.py by default, else pass %s_main = \"<package>/<file>.py\"" % (
                    label_str(ctx.label),
                    ctx.attr.main,
                    label_str(ctx.attr.binary.label),
                    ctx.label.name.replace("_image", ""),
                ))
        entrypoint = [PYTHON, "-S", "/app/entrypoint.py", "%s/%s" % (MAIN_REPO, ctx.attr.main)]
    layers = [_layer_info(ctx, ctx.attr.base, "base")]
    for i, target in enumerate(ctx.attr.layers):
        layers.append(_layer_info(ctx, target, "layer%d" % (i + 1)))
    spec = dict(
        entrypoint = entrypoint,
        cmd = ctx.attr.cmd,
        env = ctx.attr.env,
        workdir = ctx.attr.workdir,
        user = ctx.attr.user,
        labels = dict(ctx.attr.labels, **{
            "dev.mlenv.bazel.label": label_str(ctx.label),
            "dev.mlenv.git.commit": "{STABLE_GIT_COMMIT}",
        }),
        ports = ctx.attr.ports,
        tag = ctx.attr.repo_tag,
    )
    spec_file = ctx.actions.declare_file(ctx.label.name + ".spec.json")
    ctx.actions.write(spec_file, json.encode(spec))
    layout = ctx.actions.declare_directory(ctx.label.name)
    digest = ctx.actions.declare_file(ctx.label.name + ".digest")
    layers_json = ctx.actions.declare_file(ctx.label.name + ".layers.json")
    args = ctx.actions.args()
    args.add("image")
    inputs = [spec_file, ctx.info_file, ctx.file.lock_digest]
    for layer in layers:
        args.add("--layer", "%s=%s=%s" % (layer.name, layer.tar.path, layer.digest.path))
        inputs += [layer.tar, layer.digest]
    args.add("--label-file", "dev.mlenv.lock.digest=" + ctx.file.lock_digest.path)
    args.add("--config-json", spec_file)
    args.add("--stable-status", ctx.info_file)
    args.add("--out-dir", layout.path)
    args.add("--digest-out", digest)
    args.add("--layers-out", layers_json)
    ctx.actions.run(
        executable = ctx.executable._oci,
        arguments = [args],
        inputs = inputs,
        outputs = [layout, digest, layers_json],
        mnemonic = "OciImage",
        progress_message = "Assembling image %s" % label_str(ctx.label),
        # Hard links from the layout to the layer outputs need the real output tree, not a sandbox copy.
        execution_requirements = {"no-sandbox": "1"},
    )
    tarball = ctx.actions.declare_file(ctx.label.name + ".tar")
    ctx.actions.run(
        executable = ctx.executable._oci,
        arguments = ["tarball", "--layout", layout.path, "--out", tarball.path, "--repo-tag", ctx.attr.repo_tag],
        inputs = [layout],
        outputs = [tarball],
        mnemonic = "OciTarball",
        progress_message = "Writing the load-able tarball of %s" % label_str(ctx.label),
    )
    return [
        DefaultInfo(files = depset([layout, digest, layers_json]), runfiles = ctx.runfiles(files = [layout, digest, layers_json])),
        OutputGroupInfo(tarball = depset([tarball])),
    ]

oci_image = rule(
    implementation = _image_impl,
    doc = "An OCI image layout from a base layer and more layers; see ml_image for the usual way in.",
    attrs = {
        "base": attr.label(mandatory = True, allow_files = [".tar"], doc = "the base layer (ImageLayerInfo or a target with one .tar)"),
        "binary": attr.label(doc = "the py_binary `main` belongs to (checked at analysis)"),
        "cmd": attr.string_list(doc = "default arguments after the entrypoint"),
        "entrypoint": attr.string_list(doc = "the full entrypoint; default: our launcher running `main`"),
        "env": attr.string_dict(),
        "labels": attr.string_dict(doc = "image labels; the Bazel label, lock digest and git commit are added"),
        "layers": attr.label_list(allow_files = [".tar"], doc = "layers above the base, bottom first"),
        "lock_digest": attr.label(default = "@pypi//:lock_digest.txt", allow_single_file = True),
        "main": attr.string(doc = "main file of the program, relative to the workspace root (ml/homefeed/train.py)"),
        "ports": attr.string_list(doc = "exposed ports, e.g. 8001/tcp"),
        "repo_tag": attr.string(mandatory = True, doc = "NAME:TAG the tarball loads as"),
        "user": attr.string(default = NONROOT),
        "workdir": attr.string(default = "/workspace"),
        "_oci": attr.label(default = _OCI, executable = True, cfg = "exec"),
    },
)

# ---------------------------------------------------------------------------------------------- macro

IMAGE_ENV = {
    "HOME": "/home/nonroot",
    "LANG": "C.UTF-8",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "RUNFILES_DIR": RUNFILES,
    "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
}

def _default_main(binary):
    """py_binary's default main: <name>.py in the binary's package."""
    label = binary
    if label.startswith(":"):
        return "%s/%s.py" % (native.package_name(), label[1:]) if native.package_name() else label[1:] + ".py"
    if label.startswith("//"):
        pkg, _, target = label[2:].partition(":")
        if not target:
            target = pkg.rsplit("/", 1)[-1]
        return "%s/%s.py" % (pkg, target) if pkg else target + ".py"
    fail("ml_image: can't derive the main file of %r; pass train_main / serve_main" % binary)

def _image_targets(name, binary, main, layers, cmd, env, ports, repo_tag, base, tags, visibility):
    oci_image(
        name = name,
        base = base,
        binary = binary,
        main = main,
        layers = layers,
        cmd = cmd,
        env = env,
        ports = ports,
        repo_tag = repo_tag,
        tags = tags + ["mlenv_image"],
        visibility = visibility,
    )
    native.filegroup(
        name = name + ".tar",
        srcs = [":" + name],
        output_group = "tarball",
        tags = tags,
        visibility = visibility,
    )
    native.py_binary(
        name = name + ".push",
        srcs = ["//tools/rules/private:image_push.py"],
        main = "//tools/rules/private:image_push.py",
        args = ["$(rootpaths :%s)" % name],
        data = [":" + name],
        deps = ["//tools/rules/private:oci_lib"],
        python_version = "PY3",
        tags = tags,
    )
    native.py_binary(
        name = name + ".verify",
        srcs = ["//tools/rules/private:oci.py"],
        main = "//tools/rules/private:oci.py",
        args = ["verify", "$(rootpaths :%s)" % name],
        data = [":" + name],
        python_version = "PY3",
        tags = tags,
    )

def ml_image(
        name,
        train,
        serve = None,
        bundle = None,
        train_main = None,
        serve_main = None,
        train_args = [],
        serve_args = None,
        tools = [],
        env = {},
        repository = None,
        base = "//third_party/debian:base_layer",
        env_layer = "//third_party/pip:env_layer",
        tags = [],
        visibility = None):
    """`:train_image` and `:serve_image` for a project (see docs/images.md)."""
    if serve and not bundle:
        fail("ml_image(%s): serve = %r needs bundle = \":<ml_model_bundle>\" (the serve image's model layer)" % (name, serve))
    if bundle and not serve:
        fail("ml_image(%s): bundle is set but serve is not; name the server binary (e.g. serve = \":serve\")" % name)
    for key in env:
        if key in IMAGE_ENV or key == "PYTHONPATH":
            fail("ml_image(%s): env may not override %s (the image layout depends on it)" % (name, key))
    repository = repository or "mlenv/" + native.package_name().rsplit("/", 1)[-1]

    # `tools`: other binaries whose code rides in the app layer (e.g. the project's :sweep, whose workers run
    # in the train image on Kubernetes); the images' Entrypoints stay train/serve.
    binaries = [train] + ([serve] if serve else []) + tools
    app_layer(
        name = name + "_app_layer",
        binaries = binaries,
        exclude = [bundle] if bundle else [],
        tags = ["manual"],
    )
    image_env = dict(IMAGE_ENV, PYTHONPATH = "%s/%s:%s" % (RUNFILES, MAIN_REPO, SITE_PACKAGES), **env)
    _image_targets(
        name = "train_image",
        binary = train,
        main = train_main or _default_main(train),
        layers = [env_layer, ":%s_app_layer" % name],
        cmd = train_args,
        env = image_env,
        ports = [],
        repo_tag = repository + ":train",
        base = base,
        tags = tags,
        visibility = visibility,
    )
    images = [":train_image"]
    if serve:
        model_layer(name = name + "_model_layer", bundle = bundle, tags = ["manual"])
        _image_targets(
            name = "serve_image",
            binary = serve,
            main = serve_main or _default_main(serve),
            layers = [env_layer, ":%s_app_layer" % name, ":%s_model_layer" % name],
            cmd = serve_args if serve_args != None else [
                "--repository=/models",
                "--host=0.0.0.0",
                "--port=8001",
                "--metrics-port=8002",
            ],
            env = image_env,
            ports = ["8001/tcp", "8002/tcp"],
            repo_tag = repository + ":serve",
            base = base,
            tags = tags,
            visibility = visibility,
        )
        images.append(":serve_image")
    native.filegroup(name = name, srcs = images, tags = tags, visibility = visibility)
