"""The generator's contract on a throwaway workspace: bad input exits 2 and writes nothing, an existing folder
is never touched, every framework x loop renders every template with no placeholder left, and the result
is valid Python."""

import ast
import os
from pathlib import Path

import pytest

from tools.new import project


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "WORKSPACE").write_text('workspace(name = "mlenv")\n')
    (tmp_path / "ml").mkdir()
    return tmp_path


def _run(workspace: Path, *args: str) -> int:
    return project.main(["--workspace", str(workspace), *args])


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "Ads-CTR", "--framework", "pytorch"], "not a valid Python package and Bazel package name"),
    (["--name", "ads-ctr", "--framework", "pytorch"], "e.g. --name ads_ctr"),
    (["--name", "1ads", "--framework", "pytorch"], "starting with a letter"),
    (["--name", "class", "--framework", "pytorch"], "Python keyword"),
    (["--name", "ads__ctr", "--framework", "pytorch"], "no double underscores"),
    (["--name", "ads_ctr", "--framework", "jax"], "--framework 'jax' is not known; use one of pytorch, tensorflow"),
    (["--name", "ads_ctr", "--framework", "pytorch", "--loop", "fit"], "--loop 'fit' is not known for pytorch"),
    (["--name", "ads_ctr", "--framework", "tensorflow", "--loop", "native"], "--loop native is PyTorch-only"),
    (["--name", "ads_ctr", "--framework", "pytorch", "--owner", "a b"], "is not a team"),
])
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(workspace, capsys, args, message):
    before = _tree(workspace)
    owner = [] if "--owner" in args else ["--owner", "@ads/ranking"]
    assert _run(workspace, *args, *owner) == 2
    assert message in capsys.readouterr().err
    assert _tree(workspace) == before


def test_missing_flag_exits_2(workspace, capsys):
    assert _run(workspace, "--name", "ads_ctr") == 2
    assert "--framework" in capsys.readouterr().err


def test_existing_folder_is_never_overwritten(workspace, capsys):
    mine = workspace / "ml" / "ads_ctr"
    mine.mkdir()
    (mine / "model.py").write_text("# my work\n")
    assert _run(workspace, "--name", "ads_ctr", "--framework", "pytorch", "--owner", "@ads/ranking") == 2
    assert "already exists and is never overwritten" in capsys.readouterr().err
    assert _tree(mine) == ["model.py"] and (mine / "model.py").read_text() == "# my work\n"
    assert _tree(workspace / "ml") == ["ads_ctr", "ads_ctr/model.py"]  # no staging folder left behind


def test_not_a_workspace(tmp_path, capsys):
    assert project.main(["--workspace", str(tmp_path), "--name", "a", "--framework", "pytorch", "--owner", "x"]) == 2
    assert "is not the mlenv workspace" in capsys.readouterr().err


@pytest.mark.parametrize(("framework", "loop"), [("pytorch", "task"), ("pytorch", "native"), ("tensorflow", None)])
def test_every_variant_renders(workspace, capsys, framework, loop):
    args = ["--name", "ads_ctr", "--framework", framework, "--owner", "@ads/ranking"] + (["--loop", loop] if loop else [])
    assert _run(workspace, *args) == 0
    out = capsys.readouterr().out
    folder = workspace / "ml" / "ads_ctr"
    files = _tree(folder)
    for name in ("BUILD.bazel", "OWNERS", "README.md", "data.py", "data_test.py", "model.py", "model_test.py",
                 "sweep.yaml", "train.py"):
        assert name in files and f"ml/ads_ctr/{name}" in out
    for name in ("serve.py", "serve_test.py"):  # both frameworks serve: TorchScript or SavedModel bundles
        assert name in files and f"ml/ads_ctr/{name}" in out
    assert ("gpu_test.py" in files) == (framework == "pytorch")  # the locked TensorFlow is CPU-only
    build = (folder / "BUILD.bazel").read_text()
    for target in ("model_export", "bundle", "serve", "serve_test"):
        assert f'name = "{target}"' in build, target
    for command in ("test //ml/ads_ctr/...", "run //ml/ads_ctr:train", "run //ml/ads_ctr:serve"):
        assert f"tools/bazel {command}" in out, command
    for path in folder.iterdir():
        text = path.read_text()
        assert "__project__" not in text and "__owner__" not in text and "__loop__" not in text, path
        if path.suffix == ".py":
            ast.parse(text, filename=str(path))
    assert "from ml.ads_ctr import" in (folder / "train.py").read_text()
    assert (folder / "OWNERS").read_text().splitlines()[-1] == "@ads/ranking"
    assert [p.name for p in (workspace / "ml").iterdir()] == ["ads_ctr"]  # staging folder renamed, none left


def test_a_failed_write_leaves_nothing(workspace, monkeypatch):
    p = project.plan(workspace, "ads_ctr", "pytorch", "native", "@ads/ranking")

    def broken_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError):
        project.generate(p)
    assert list((workspace / "ml").iterdir()) == []


def test_owner_defaults_to_git_user_email(workspace, monkeypatch):
    monkeypatch.setattr(project, "default_owner", lambda _: "dev@example.com")
    assert project.plan(workspace, "ads_ctr", "pytorch", None, None).owner == "dev@example.com"
    monkeypatch.setattr(project, "default_owner", lambda _: None)
    with pytest.raises(project.UsageError, match="pass --owner TEAM"):
        project.plan(workspace, "ads_ctr", "pytorch", None, None)
