"""Presubmit's selection with real git and real Bazel on a sample workspace, then full runs.

The sample has the shapes that matter in mlenv: an external repository built from a lock file (@pypi, whose
rule reads //deps:lock.txt through a Label, as ours does), a rule .bzl, an imported .bazelrc, a toolchain,
a GPU test, an image (tag mlenv_image) with its reproducibility test (tag mlenv_image_repro), a deleted file
and a renamed one. Each case commits a base, changes the tree, and checks what is selected.
"""

import os
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ci import presubmit
from ci.private.bazel import Bazel
from ci.private.changes import changed_files
from ci.private.selection import Config, Selector
from tools.testing.bazel_workspace import SampleWorkspace, runfiles_repo

BUILDIFIER = str(runfiles_repo("mlenv_buildifier") / "buildifier")
TOOLS = ["--buildifier", BUILDIFIER, "--ruff", str(runfiles_repo("mlenv_ruff") / "ruff")]
OK_SH = "#!/bin/sh\nexit 0\n"

FILES = {
    "WORKSPACE.extra": 'load("//deps:repo.bzl", "fake_pip")\n\nfake_pip(name = "pypi")\n',
    ".bazelrc": ("test --test_tag_filters=-gpu\ntest:gpu --test_tag_filters=gpu\n"
                 "import %workspace%/ci/bazelrc\n"),
    "ci/bazelrc": "build:ci --color=no\n",
    "BUILD.bazel": "",
    "README.md": "the sample\n",
    "deps/BUILD.bazel": 'exports_files(["lock.txt"])\n',
    "deps/lock.txt": "numpy==1.0\n",
    "deps/repo.bzl": '''"""A stand-in for @pypi: reads the lock through a Label, like pip_environment."""

def _fake_pip_impl(rctx):
    rctx.read(Label("//deps:lock.txt"))
    rctx.file("WORKSPACE", "")
    rctx.file("BUILD.bazel", 'filegroup(name = "numpy", visibility = ["//visibility:public"])\\n')

fake_pip = repository_rule(implementation = _fake_pip_impl)
''',
    "a/BUILD.bazel": '''sh_library(
    name = "lib",
    srcs = glob(["*.txt"]),
    data = ["@pypi//:numpy"],
    visibility = ["//visibility:public"],
)

sh_test(
    name = "a_test",
    srcs = ["a_test.sh"],
    deps = [":lib"],
)
''',
    "a/a_test.sh": OK_SH,
    "a/x.txt": "x\n",
    "a/y.txt": "y\n",
    "b/BUILD.bazel": 'sh_test(\n    name = "b_test",\n    srcs = ["b_test.sh"],\n    data = ["//a:lib"],\n)\n',
    "b/b_test.sh": OK_SH,
    "c/defs.bzl": '"""A rule macro."""\n\ndef my_test(name, **kwargs):\n    native.sh_test(name = name, srcs = ["c_test.sh"], **kwargs)\n',
    "c/BUILD.bazel": 'load(":defs.bzl", "my_test")\n\nmy_test(name = "c_test")\n',
    "c/c_test.sh": OK_SH,
    "d/BUILD.bazel": 'sh_test(\n    name = "d_test",\n    srcs = ["d_test.sh"],\n    data = glob(["*.txt"]),\n)\n',
    "d/d_test.sh": "#!/bin/sh\ntest ! -e d/fail.txt\n",
    "d/d.txt": "d\n",
    "gpu/BUILD.bazel": ('sh_test(\n    name = "gpu_test",\n    srcs = ["gpu_test.sh"],\n    data = ["//a:lib"],\n'
                        '    tags = ["gpu"],\n)\n'),
    "gpu/gpu_test.sh": OK_SH,
    "img/BUILD.bazel": '''genrule(
    name = "image",
    srcs = ["layer.txt"],
    outs = ["image.tar"],
    cmd = "cp $< $@",
    tags = ["mlenv_image"],
)

sh_test(
    name = "image_repro_test",
    srcs = ["repro.sh"],
    data = [":image"],
    tags = ["mlenv_image_repro"],
)
''',
    "img/layer.txt": "layer\n",
    "img/repro.sh": OK_SH,
    "tc/BUILD.bazel": '''toolchain_type(name = "type")

filegroup(
    name = "impl",
    srcs = ["impl.txt"],
)

toolchain(
    name = "tc",
    toolchain = ":impl",
    toolchain_type = ":type",
)
''',
    "tc/impl.txt": "impl\n",
}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    ws = SampleWorkspace.create(tmp_path_factory.mktemp("presubmit") / "ws")
    for path, text in FILES.items():
        if path == "WORKSPACE.extra":
            ws.append("WORKSPACE", text)
            continue
        ws.write(path, text)
        if path.endswith(".sh"):
            os.chmod(ws.root / path, 0o755)
    (ws.root / ".gitignore").write_text("/bazel-*\n/.mlenv/\n")
    (ws.root / "ci/presubmit.json").write_text('{"always_test": ["//d:d_test"]}\n')
    git(ws.root, "init", "-q")
    files = subprocess.run(["git", "ls-files", "--others"], cwd=ws.root, capture_output=True, text=True).stdout.split()
    starlark = [f for f in files if f.endswith((".bzl", "BUILD.bazel", "WORKSPACE"))]
    subprocess.run([TOOLS[1], "-mode=fix", *starlark], cwd=ws.root, check=True)  # the sample starts lint-clean
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-q", "-m", "base")
    ws.base = git(ws.root, "rev-parse", "HEAD")
    yield ws
    ws.shutdown()


@pytest.fixture
def tree(sample):
    """The sample at its base commit, clean, after the test."""
    yield sample
    git(sample.root, "reset", "-q", "--hard", sample.base)
    git(sample.root, "clean", "-q", "-fdx", "-e", "/bazel-*")


def select(ws):
    bazel = Bazel(ws.root, ws.bazel_binary, ws.startup)
    return Selector(ws.root, bazel, Config.load(ws.root / "ci/presubmit.json")).select(changed_files(ws.root, ws.base))


def selected_tests(selection):
    return sorted(label for label, info in selection.rules.items() if info.is_test)


def test_one_file_selects_only_its_rdeps(tree):
    tree.append("a/x.txt", "more\n")
    selection = select(tree)
    assert not selection.everything
    assert selected_tests(selection) == ["//a:a_test", "//b:b_test", "//gpu:gpu_test"]
    assert "modified a/x.txt" in selection.reasons["//b:b_test"]


def test_unused_file_selects_nothing(tree):
    tree.append("README.md", "more\n")
    selection = select(tree)
    assert selection.rules == {} and any("README.md" in line for line in selection.unused)


def test_lock_change_selects_every_dependent_of_the_repository(tree):
    tree.write("deps/lock.txt", "numpy==2.0\n")
    selection = select(tree)
    assert not selection.everything
    assert "@pypi//..." in selection.seeds
    assert selected_tests(selection) == ["//a:a_test", "//b:b_test", "//gpu:gpu_test"]


@pytest.mark.parametrize("path", ["WORKSPACE", ".bazelrc", "ci/bazelrc", "deps/repo.bzl", "tc/impl.txt"])
def test_workspace_wide_and_toolchain_changes_select_everything(tree, path):
    tree.append(path, "\n# changed\n" if not path.endswith(".txt") else "changed\n")
    selection = select(tree)
    assert selection.everything, selection.seeds
    assert "//d:d_test" in selection.rules and "//img:image" in selection.rules


def test_bzl_change_selects_packages_loading_it(tree):
    tree.append("c/defs.bzl", "\n# changed\n")
    assert selected_tests(select(tree)) == ["//c:c_test"]


def test_deleted_file_selects_its_former_dependents(tree):
    (tree.root / "a/y.txt").unlink()
    selection = select(tree)
    assert selected_tests(selection) == ["//a:a_test", "//b:b_test", "//gpu:gpu_test"]
    assert "deleted a/y.txt" in selection.reasons["//b:b_test"]


def test_renamed_file_selects_old_and_new_dependents(tree):
    git(tree.root, "mv", "a/y.txt", "d/y.txt")
    selection = select(tree)
    assert selected_tests(selection) == ["//a:a_test", "//b:b_test", "//d:d_test", "//gpu:gpu_test"]


def test_dry_run_prints_exact_commands_with_gpu_and_images(tree, capsys):
    tree.append("img/layer.txt", "more\n")
    tree.append("a/x.txt", "more\n")
    code = presubmit.main(["--base", tree.base, "--workspace", str(tree.root), "--dry-run", "--gpu",
                           "--bazel", tree.bazel_binary, *[f"--startup-option={o}" for o in tree.startup], *TOOLS])
    out = capsys.readouterr().out
    assert code == 0, out
    bazel = " ".join([tree.bazel_binary, *tree.startup])
    would_run = [line.strip()[len("would run: "):] for line in out.splitlines() if "would run: " in line]
    assert would_run[2:] == [
        f"{bazel} build --config=ci //img:image",
        f"{bazel} test --config=ci //a:a_test //a:lib //b:b_test //d:d_test //gpu:gpu_test //img:image_repro_test",
        f"{bazel} test --config=ci --config=gpu //gpu:gpu_test",
    ]
    assert would_run[0].startswith(shlex.quote(BUILDIFIER) + " -mode=check")  # Bzlmod names hold a `~`
    assert "reproducibility tests (run in the cpu lane): //img:image_repro_test" in out


def test_full_run_reports_junit_and_fails_on_a_failing_test(tree, tmp_path, capsys):
    tree.write("d/fail.txt", "make d_test fail\n")
    tree.write("c/BUILD.bazel", 'load(":defs.bzl",  "my_test")\nmy_test(name="c_test")\n')  # buildifier flags it
    out_dir = tmp_path / "report"
    code = presubmit.main(["--base", tree.base, "--workspace", str(tree.root), "--out", str(out_dir),
                           "--bazel", tree.bazel_binary, *[f"--startup-option={o}" for o in tree.startup], *TOOLS])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "buildifier: FAILED" in out and "tools/bazel run //ci:fix" in out
    assert "skipped: GPU lane" not in out  # c and d have no GPU tests
    junit = out_dir / "junit/cpu"
    cases = {p.relative_to(junit).parent.as_posix(): ET.parse(p).getroot() for p in junit.rglob("test.xml")}  # noqa: S314 - Bazel's own test.xml
    assert sorted(cases) == ["c/c_test", "d/d_test"]
    assert cases["d/d_test"].find(".//failure") is not None or cases["d/d_test"].find(".//error") is not None
    assert (out_dir / "summary.txt").read_text().endswith("\n") and "presubmit FAILED" in out


def test_full_run_passes(tree, tmp_path, capsys):
    tree.append("d/d.txt", "more\n")
    code = presubmit.main(["--base", tree.base, "--workspace", str(tree.root), "--out", str(tmp_path / "r"),
                           "--bazel", tree.bazel_binary, *[f"--startup-option={o}" for o in tree.startup], *TOOLS])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 passed, 0 failed" in out and "presubmit PASSED" in out


def test_bad_base_names_the_fix(tree, capsys):
    assert presubmit.main(["--base", "no-such-rev", "--workspace", str(tree.root), "--no-lint"]) == 2
    assert "git fetch" in capsys.readouterr().err


