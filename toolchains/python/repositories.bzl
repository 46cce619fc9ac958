"""Public entry point for the pinned Python interpreter toolchain.

    load("//toolchains/python:repositories.bzl", "python_interpreter")
    python_interpreter(name = "mlenv_python")
    register_toolchains("@mlenv_python//:toolchain")
"""

load("//toolchains/python/private:interpreter.bzl", _python_interpreter = "python_interpreter")
load("//toolchains/python/private:versions.bzl", _PYTHON_VERSION = "PYTHON_VERSION")

python_interpreter = _python_interpreter
PYTHON_VERSION = _PYTHON_VERSION
