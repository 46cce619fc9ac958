"""The pinned buildifier and ruff flag a misformatted BUILD file and an unused import; //ci:fix repairs both."""

import subprocess

import pytest

from tools.lint.lint import FIX_COMMAND, Linter
from tools.testing.bazel_workspace import runfiles_repo


@pytest.fixture
def repo(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/BUILD.bazel").write_text('sh_test(name="t",srcs=["t.sh"])\n')
    (tmp_path / "pkg/mod.py").write_text("import os\nimport sys\n\nprint(sys.argv)\n")
    (tmp_path / "ruff.toml").write_text('[lint]\nselect = ["F"]\n')
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored/BUILD").write_text("x=1\n")  # ignored by git: never linted
    return Linter(tmp_path, str(runfiles_repo("mlenv_buildifier") / "buildifier"), str(runfiles_repo("mlenv_ruff") / "ruff"))


def test_pinned_versions_run():
    out = subprocess.run([str(runfiles_repo("mlenv_ruff") / "ruff"), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ruff ")


def test_check_flags_both_and_names_the_fix(repo):
    assert repo.starlark_files() == ["pkg/BUILD.bazel"]
    results = {r.tool: r for r in repo.check()}
    assert not results["buildifier"].ok and "pkg/BUILD.bazel" in results["buildifier"].output
    assert not results["ruff"].ok and "F401" in results["ruff"].output
    assert FIX_COMMAND in results["buildifier"].output and FIX_COMMAND in results["ruff"].output


def test_fix_repairs_then_check_passes(repo):
    assert all(r.ok for r in repo.fix())
    assert 'name = "t"' in (repo.workspace / "pkg/BUILD.bazel").read_text()
    assert "import os" not in (repo.workspace / "pkg/mod.py").read_text()
    assert all(r.ok for r in repo.check()), [r.output for r in repo.check()]


def test_build_templates_are_formatted_like_build_files(repo):
    (repo.workspace / "tmpl").mkdir()
    (repo.workspace / "tmpl/BUILD.bazel.tmpl").write_text('py_library(name="x",deps=["b","a"])\n')
    assert repo.starlark_files() == ["pkg/BUILD.bazel", "tmpl/BUILD.bazel.tmpl"]
    results = {r.tool: r for r in repo.check()}
    assert "tmpl/BUILD.bazel.tmpl" in results["buildifier"].output
    repo.fix()
    assert (repo.workspace / "tmpl/BUILD.bazel.tmpl").read_text() == (
        'py_library(\n    name = "x",\n    deps = [\n        "a",\n        "b",\n    ],\n)\n')
