"""The interpreter toolchain, through real Bazel on a sample workspace."""

import stat

import pytest

from tools.testing.bazel_workspace import SampleWorkspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = SampleWorkspace.create(tmp_path_factory.mktemp("interp") / "ws", copy={"toolchains/python": "toolchains/python"})
    ws.append("WORKSPACE", 'load("//toolchains/python:repositories.bzl", "python_interpreter")\n'
                           'python_interpreter(name = "mlenv_python")\n'
                           'register_toolchains("@mlenv_python//:toolchain")\n')
    ws.write("BUILD.bazel", 'py_binary(name = "bin", srcs = ["bin.py"])\n')
    ws.write("bin.py", "import sys\nprint('python', '%d.%d' % sys.version_info[:2], 'no_site', sys.flags.no_site)\n")
    yield ws
    ws.shutdown()


def fake_python(folder, version):
    path = folder / f"python{version}"
    path.write_text('#!/bin/sh\necho \'{"executable": "%s", "version": [%s], "implementation": "CPython", "prefix": "/"}\'\n'
                    % (path, version.replace(".", ", ")))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_runs_pinned_interpreter_without_host_site_packages(workspace):
    result = workspace.bazel("run", "//:bin")
    assert result.returncode == 0, result.stderr
    assert "python 3.11 no_site 1" in result.stdout


def test_wrong_version_fails_at_fetch_naming_found_needed_and_fix(workspace, tmp_path):
    fake = fake_python(tmp_path, "3.12.1")
    result = workspace.bazel("build", "//:bin", env={"MLENV_PYTHON": str(fake)})
    assert result.returncode != 0
    assert "needs CPython 3.11" in result.stderr
    assert f"{fake} (from $MLENV_PYTHON) is CPython 3.12.1" in result.stderr
    assert "export MLENV_PYTHON=/path/to/python3.11" in result.stderr


def test_missing_explicit_interpreter_is_named(workspace, tmp_path):
    result = workspace.bazel("build", "//:bin", env={"MLENV_PYTHON": str(tmp_path / "nope")})
    assert result.returncode != 0
    assert str(tmp_path / "nope") in result.stderr and "does not run" in result.stderr
