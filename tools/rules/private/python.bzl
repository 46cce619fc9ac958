"""Implementation of //tools/rules:python.bzl."""

_PYTEST_MAIN = "//tools/rules/private:pytest_main.py"
_PYTEST_DEPS = ["@pypi//pytest"]

def ml_py_library(name, **kwargs):
    native.py_library(name = name, **kwargs)

def ml_py_binary(name, **kwargs):
    kwargs.setdefault("python_version", "PY3")
    native.py_binary(name = name, **kwargs)

def ml_py_test(name, srcs, deps = [], args = [], pytest_args = [], **kwargs):
    """A py_test that runs `srcs` under pytest.

    Args:
      name: target name.
      srcs: the test files (test_*.py / *_test.py). Only these are collected.
      deps: libraries the tests import. pytest itself is added.
      args: passed to pytest after the test files (e.g. ["-x"]).
      pytest_args: alias of args, kept for readability in BUILD files.
      **kwargs: any py_test attribute (data, size, timeout, shard_count, tags, env, ...).

    JUnit XML goes to $XML_OUTPUT_FILE (Bazel's test.xml), `--test_filter=EXPR` becomes `pytest -k EXPR`,
    and shard_count splits the collected tests across shards.
    """
    if not srcs:
        fail("ml_py_test(%s): srcs is empty; list the test files to run, e.g. srcs = [\"%s.py\"]" % (name, name))
    for src in srcs:
        if type(src) == "string" and src.startswith(":") == False and not src.endswith(".py"):
            fail("ml_py_test(%s): srcs must be .py files, got %r; put data files in `data`" % (name, src))
    native.py_test(
        name = name,
        srcs = srcs + [_PYTEST_MAIN],
        main = _PYTEST_MAIN,
        deps = deps + [d for d in _PYTEST_DEPS if d not in deps],
        args = ["$(rootpath %s)" % s for s in srcs] + args + pytest_args,
        python_version = "PY3",
        **kwargs
    )
