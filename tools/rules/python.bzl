"""Public Python macros for mlenv projects: ml_py_library, ml_py_binary, ml_py_test.

    load("//tools/rules:python.bzl", "ml_py_binary", "ml_py_library", "ml_py_test")

    ml_py_test(
        name = "model_test",
        srcs = ["model_test.py"],
        deps = [":model", "@pypi//torch"],
    )

They wrap Bazel's native py_* rules (which newer Bazel moves into rules_python: that swap is one place,
tools/rules/private/python.bzl). ml_py_test runs the files under pytest; see docs/rules.md.
"""

load("//tools/rules/private:python.bzl", _ml_py_binary = "ml_py_binary", _ml_py_library = "ml_py_library", _ml_py_test = "ml_py_test")

ml_py_library = _ml_py_library
ml_py_binary = _ml_py_binary
ml_py_test = _ml_py_test
