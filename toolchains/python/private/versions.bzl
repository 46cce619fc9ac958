"""Pins are data: the interpreter every lock in third_party/pip is built for."""

# The CPython minor version (major, minor) whose ABI (cp311) the locked wheels are built for. Changing it
# means relocking: `tools/bazel run //third_party/pip:lock`.
PYTHON_VERSION = (3, 11)

# Environment variable naming the interpreter explicitly (an absolute path). Read at fetch time only.
PYTHON_ENV_VAR = "MLENV_PYTHON"

# The exact interpreter: Debian bookworm's build, the bytes the images run (//third_party/debian:base_layer).
PYTHON_FULL_VERSION = "3.11.2"

# The Debian packages of //third_party/debian:packages.lock.json that make the interpreter, with why each is
# needed (ldd of usr/bin/python3.11 and of every lib-dynload module). glibc (libc6) is the host's: see
# interpreter.bzl's check. Everything here must be in the lock (the fetch fails naming what is missing).
INTERPRETER_PACKAGES = {
    "python3.11-minimal": "usr/bin/python3.11 itself",
    "libpython3.11-minimal": "the core standard library (os, encodings, _ssl, _hashlib, ...)",
    "libpython3.11-stdlib": "the rest of the standard library and lib-dynload",
    "libexpat1": "pyexpat, linked into the interpreter",
    "zlib1g": "zlib, linked into the interpreter",
    "libssl3": "_ssl, _hashlib",
    "libffi8": "_ctypes",
    "libsqlite3-0": "_sqlite3",
    "libbz2-1.0": "_bz2",
    "liblzma5": "_lzma",
    "libncursesw6": "_curses, _curses_panel",
    "libtinfo6": "_curses, readline",
    "libreadline8": "readline",
    "libuuid1": "_uuid",
    "libdb5.3": "_dbm",
    "libcrypt1": "_crypt",
    "libnsl2": "nis",
    "libtirpc3": "nis",
    "libgssapi-krb5-2": "nis (through libtirpc)",
    "libkrb5-3": "nis (through libgssapi)",
    "libk5crypto3": "nis (through libgssapi)",
    "libkrb5support0": "nis (through libgssapi)",
    "libcom-err2": "nis (through libgssapi)",
    "libkeyutils1": "nis (through libkrb5)",
}
