"""Implementation of //tools/rules:sweep.bzl."""

load(":launch.bzl", "launch_image_info")
load(":python.bzl", "ml_py_binary")

_MAIN = "//tools/sweep:sweep.py"

def ml_sweep(name, trainer, config, space = None, deps = [], project = None, data = [], image = None, **kwargs):
    """An Optuna sweep over `trainer`: `bazel run :NAME -- --trials N --parallel K` (tools/sweep/sweep.py).

    Args:
      name: target name (conventionally "sweep").
      trainer: the project's engine trainer binary (e.g. ":train"); each trial is one run of it.
      config: "module:Class" of the trainer's config dataclass; the space file is checked against it.
      space: the default search-space YAML (--space overrides it).
      deps: libraries that provide `config` (e.g. the trainer's library).
      project: project name, the study's default prefix (default: the package's last component).
      data: extra runfiles.
      image: the project's ml_image train image (e.g. ":train_image"). Defines `<name>_k8s`, the same sweep
        that can `--on k8s`: its workers run in that image, pinned by digest; list `:<name>` in the
        ml_image's `tools` so the image carries the sweep's code.
      **kwargs: other py_binary attributes (tags, visibility, ...).
    """
    if ":" not in config or config.startswith(":") or config.endswith(":"):
        fail("ml_sweep(%s): config must be \"python.module:ConfigClass\", e.g. \"ml.homefeed.train:HomefeedConfig\"; got %r" % (name, config))
    pkg = native.package_name()
    args = [
        "--trainer=$(rootpath %s)" % trainer,
        "--config-class=%s" % config,
        "--project=%s" % (project or pkg.split("/")[-1]),
        "--train-label=%s" % (("//" + pkg + trainer) if trainer.startswith(":") else trainer),
    ]
    if space:
        args.append("--default-space=$(rootpath %s)" % space)
    data = [trainer] + ([space] if space else []) + data
    ml_py_binary(
        name = name,
        srcs = [_MAIN],
        main = _MAIN,
        args = args,
        data = data,
        deps = ["//tools/sweep:sweep_lib"] + deps,
        **kwargs
    )
    if image:
        # A separate target, so a local sweep never builds the image: `bazel run :<name>_k8s -- --on k8s`.
        launch_image_info(name = name + "_image_info", image = image)
        ml_py_binary(
            name = name + "_k8s",
            srcs = [_MAIN],
            main = _MAIN,
            args = args + ["--image-info=$(rootpath :%s_image_info)" % name],
            data = data + [":%s_image_info" % name],
            deps = ["//tools/sweep:sweep_lib"] + deps,
            **kwargs
        )
