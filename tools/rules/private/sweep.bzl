"""Implementation of //tools/rules:sweep.bzl."""

load(":python.bzl", "ml_py_binary")

_MAIN = "//tools/sweep:sweep.py"

def ml_sweep(name, trainer, config, space = None, deps = [], project = None, data = [], **kwargs):
    """An Optuna sweep over `trainer`: `bazel run :NAME -- --trials N --parallel K` (tools/sweep/sweep.py).

    Args:
      name: target name (conventionally "sweep").
      trainer: the project's engine trainer binary (e.g. ":train"); each trial is one run of it.
      config: "module:Class" of the trainer's config dataclass; the space file is checked against it.
      space: the default search-space YAML (--space overrides it).
      deps: libraries that provide `config` (e.g. the trainer's library).
      project: project name, the study's default prefix (default: the package's last component).
      data: extra runfiles.
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
    ml_py_binary(
        name = name,
        srcs = [_MAIN],
        main = _MAIN,
        args = args,
        data = [trainer] + ([space] if space else []) + data,
        deps = ["//tools/sweep:sweep_lib"] + deps,
        **kwargs
    )
