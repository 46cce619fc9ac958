"""Implementation of //tools/rules:python.bzl (and the pytest plumbing the GPU and trainer rules share)."""

PYTEST_MAIN = "//tools/rules/private:pytest_main.py"
_PYTEST_DEPS = ["@pypi//pytest"]

def ml_py_library(name, **kwargs):
    native.py_library(name = name, **kwargs)

def ml_py_binary(name, **kwargs):
    kwargs.setdefault("python_version", "PY3")
    native.py_binary(name = name, **kwargs)

def pytest_test(name, srcs, deps = [], args = [], runner = PYTEST_MAIN, runner_srcs = [], runner_args = [], **kwargs):
    """A py_test whose entry point is `runner` (pytest_main.py or a wrapper of it) running `srcs`."""
    if not srcs:
        fail("%s: srcs is empty; list the test files to run, e.g. srcs = [\"%s.py\"]" % (name, name))
    for src in srcs:
        if not src.startswith(":") and not src.startswith("//") and not src.endswith(".py"):
            fail("%s: srcs must be .py files, got %r; put data files in `data`" % (name, src))
    extra = [PYTEST_MAIN] if runner == PYTEST_MAIN else [runner, PYTEST_MAIN]
    native.py_test(
        name = name,
        srcs = srcs + extra + runner_srcs,
        main = runner,
        deps = deps + [d for d in _PYTEST_DEPS if d not in deps],
        args = runner_args + ["$(rootpath %s)" % s for s in srcs] + args,
        python_version = "PY3",
        **kwargs
    )

def ml_py_test(name, srcs, deps = [], args = [], pytest_args = [], env_vars = {}, **kwargs):
    """A py_test that runs `srcs` under pytest.

    Args:
      name: target name.
      srcs: the test files (test_*.py / *_test.py). Only these are collected.
      deps: libraries the tests import. pytest itself is added.
      args: passed to pytest after the test files (e.g. ["-x"]).
      pytest_args: alias of args, kept for readability in BUILD files.
      env_vars: environment variables set for the test process (works on every Bazel version).
      **kwargs: any py_test attribute (data, size, timeout, shard_count, tags, ...).

    JUnit XML goes to $XML_OUTPUT_FILE (Bazel's test.xml), `--test_filter=EXPR` becomes `pytest -k EXPR`,
    and shard_count splits the collected tests across shards.
    """
    pytest_test(
        name = name,
        srcs = srcs,
        deps = deps,
        args = args + pytest_args,
        runner_args = ["--mlenv-env=%s=%s" % (k, v) for k, v in sorted(env_vars.items())],
        **kwargs
    )
