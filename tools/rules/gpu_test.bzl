"""Public: ml_gpu_test, a pytest test that needs NVIDIA GPUs (see docs/rules.md).

    load("//tools/rules:gpu_test.bzl", "ml_gpu_test")

    ml_gpu_test(
        name = "amp_gpu_test",
        srcs = ["amp_gpu_test.py"],
        deps = ["//ml/engine"],
        cpu_fallback = True,   # also `amp_gpu_test_cpu` in the default (CPU) suite
    )
"""

load("//tools/rules/private:gpu_test.bzl", _ml_gpu_test = "ml_gpu_test")

ml_gpu_test = _ml_gpu_test
