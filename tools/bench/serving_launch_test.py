"""serving_launch.ensure_kserve_venv trusts a cached kserve venv only while it imports what the KServe side
needs, rebuilds a broken one, and never deletes a folder that is not a virtualenv. No network: the build
step itself (pip install kserve) is replaced by a recorder."""

import sys
from pathlib import Path

import pytest

from tools.bench import serving_launch
from tools.bench.serving_loadgen import Fail


def fake_venv(root: Path, want: str) -> Path:
    """A cached venv as ensure_kserve_venv leaves it: bin/python (here: this interpreter), pyvenv.cfg, marker."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / ".mlenv-bench").write_text(f"{want}\n0.21.0\n")
    return root


def test_import_problem_names_the_missing_module():
    assert serving_launch.venv_import_problem(Path(sys.executable), ("json",)) is None
    problem = serving_launch.venv_import_problem(Path(sys.executable), ("json", "no_such_module_mlenv"))
    assert "No module named 'no_such_module_mlenv'" in problem
    assert "did not run" in serving_launch.venv_import_problem(Path("/nonexistent/python"), ("json",))


def test_a_working_cached_venv_is_used_and_a_broken_one_rebuilt(tmp_path, monkeypatch):
    venv = fake_venv(tmp_path / "venv", "kserve==0.21.0 torch==2.13.0")
    built = []
    monkeypatch.setattr(serving_launch, "build_kserve_venv",
                        lambda v, spec, torch_spec: built.append((v.exists(), spec)) or (v / "bin/python", "new"))

    monkeypatch.setattr(serving_launch, "KSERVE_IMPORTS", ("json",))
    assert serving_launch.ensure_kserve_venv(venv, "kserve==0.21.0", "torch==2.13.0") == (venv / "bin/python", "0.21.0")
    assert built == []

    monkeypatch.setattr(serving_launch, "KSERVE_IMPORTS", ("json", "no_such_module_mlenv"))  # e.g. grpc gone
    assert serving_launch.ensure_kserve_venv(venv, "kserve==0.21.0", "torch==2.13.0")[1] == "new"
    assert built == [(False, "kserve==0.21.0")], "the broken venv should be removed before it is rebuilt"


def test_a_folder_that_is_not_a_venv_is_refused_not_deleted(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(Fail, match="exists and is not a virtualenv"):
        serving_launch.ensure_kserve_venv(folder, "kserve==0.21.0", "torch==2.13.0")
    assert (folder / "notes.txt").read_text() == "keep me"
