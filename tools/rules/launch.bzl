"""Public: ml_launch, a project's `:launch` target in one line (see docs/launch.md).

    load("//tools/rules:launch.bzl", "ml_launch")

    ml_launch(
        name = "launch",
        project = "homefeed",
        trainer = ":train",
        image = ":train_image",     # optional: needed for --on k8s (the manifests pin its digest)
    )
    # tools/bazel run :launch -- --on local --nproc-per-node 2 -- --epochs 1
    # tools/bazel run :launch -- --on k8s --repository REGISTRY/NAME --dry-run -- --epochs 1
"""

load("//tools/rules/private:launch.bzl", _ml_launch = "ml_launch")

ml_launch = _ml_launch
