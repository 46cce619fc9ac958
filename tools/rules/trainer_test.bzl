"""Public: ml_trainer_integration_test (see docs/rules.md).

    load("//tools/rules:trainer_test.bzl", "ml_trainer_integration_test")

    ml_trainer_integration_test(
        name = "train_integration_test",
        trainer = ":train",
        args = ["--set", "train_samples=4096"],   # tiny data; passed through to the trainer
    )
"""

load("//tools/rules/private:trainer_test.bzl", _ml_trainer_integration_test = "ml_trainer_integration_test")

ml_trainer_integration_test = _ml_trainer_integration_test
