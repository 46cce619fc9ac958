"""Public: ml_sweep, a `:sweep` target next to a project's `:train` (see docs/sweeps.md).

    load("//tools/rules:sweep.bzl", "ml_sweep")

    ml_sweep(
        name = "sweep",
        trainer = ":train",
        config = "ml.homefeed.train:HomefeedConfig",
        space = "sweep.yaml",
        deps = [":train_lib"],
    )

    tools/bazel run //ml/homefeed:sweep -- --trials 8 --parallel 2
"""

load("//tools/rules/private:sweep.bzl", _ml_sweep = "ml_sweep")

ml_sweep = _ml_sweep
