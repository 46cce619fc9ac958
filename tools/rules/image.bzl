"""Public: ml_image, reproducible train and serve OCI images without a daemon (see docs/images.md).

    load("//tools/rules:image.bzl", "ml_image")

    ml_image(
        name = "images",
        train = ":train",
        serve = ":serve",
        bundle = ":bundle",
    )
    # bazel build :train_image :serve_image        OCI layouts (+ .digest, .layers.json)
    # bazel build :serve_image.tar                 one tarball for `podman load` / `docker load`
    # bazel run :serve_image.push -- --repository REGISTRY/NAME[:TAG]
    # bazel run :serve_image.verify
"""

load(
    "//tools/rules/private:image.bzl",
    _ml_image = "ml_image",
    _python_env_layer = "python_env_layer",
)

ml_image = _ml_image
python_env_layer = _python_env_layer
