"""Pins are data: the interpreter every lock in third_party/pip is built for."""

# The CPython minor version (major, minor) whose ABI (cp311) the locked wheels are built for. Changing it
# means relocking: `tools/bazel run //third_party/pip:lock`.
PYTHON_VERSION = (3, 11)

# Environment variable naming the interpreter explicitly (an absolute path). Read at fetch time only.
PYTHON_ENV_VAR = "MLENV_PYTHON"
