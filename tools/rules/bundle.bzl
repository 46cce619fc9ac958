"""Public: ml_model_bundle and ml_trained_model (see docs/rules.md).

    load("//tools/rules:bundle.bzl", "ml_model_bundle", "ml_trained_model")

    ml_trained_model(name = "model_export", trainer = ":train", args = ["--epochs=1"])
    ml_model_bundle(name = "bundle", model_name = "homefeed", export = ":model_export")
    # bazel run :bundle.check
"""

load("//tools/rules/private:bundle.bzl", _ml_model_bundle = "ml_model_bundle", _ml_trained_model = "ml_trained_model")

ml_model_bundle = _ml_model_bundle
ml_trained_model = _ml_trained_model
