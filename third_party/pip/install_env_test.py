"""install_env.py against real uv and real (tiny, generated) wheels: install, hash pinning, bad locks."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from third_party.pip.private import install_env
from tools.testing.bazel_workspace import runfiles_repo
from tools.testing.wheels import make_wheel

UV = str((runfiles_repo("mlenv_uv") / "uv").resolve())
PYTHON = str((runfiles_repo("mlenv_python") / "python3").absolute())  # the pinned interpreter's wrapper (sets its libraries)
SCRIPT = str(Path("third_party/pip/private/install_env.py").resolve())
OFFLINE_INDEX = "https://pypi.invalid/simple"  # never resolves: the tests use a local find-links folder only


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_installer(tmp_path: Path, lock_text: str, *extra: str, python: str = PYTHON,
                  shell: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    lock = tmp_path / "lock.txt"
    lock.write_text(lock_text)
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, UV_CACHE_DIR=str(tmp_path / "uv-cache"), **(shell or {}))
    proc = subprocess.run(
        [python, "-I", SCRIPT, "--lock", str(lock), "--lock-label", "//test:lock.txt", "--variant", "cpu",
         "--repo", str(repo), "--uv", UV, "--python", python, "--default-index", OFFLINE_INDEX, *extra],
        capture_output=True, text=True, env=env, timeout=300)
    return proc, repo


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    return {
        "alpha": make_wheel(folder, "alpha", "1.0", requires=["beta"]),
        "beta": make_wheel(folder, "beta", "2.0"),
        "folder": folder,
    }


def lock_for(wheels, beta_hash=None):
    return (f"--find-links {wheels['folder']}\n--extra-index-url https://mirror.invalid/simple\n\n"
            f"alpha==1.0 \\\n    --hash=sha256:{sha256(wheels['alpha'])}\n    # via -r requirements.in\n"
            f"beta==2.0 \\\n    --hash=sha256:{beta_hash or sha256(wheels['beta'])}\n    # via alpha\n")


def test_installs_flat_tree_with_targets_per_distribution(tmp_path, wheels):
    proc, repo = run_installer(tmp_path, lock_for(wheels))
    assert proc.returncode == 0, proc.stderr
    site = repo / "site-packages"
    assert (site / "alpha" / "__init__.py").exists() and (site / "beta" / "__init__.py").exists()
    assert "extra index https://mirror.invalid/simple is unreachable" in proc.stderr
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["distributions"]["alpha"]["requires"] == ["beta"]
    assert '"//beta"' in (repo / "alpha" / "BUILD.bazel").read_text()
    assert 'imports = ["site-packages"]' in (repo / "BUILD.bazel").read_text()
    assert (repo / "lock_digest.txt").read_text().startswith("sha256:")


def test_a_replaced_package_keeps_its_label_as_an_alias(tmp_path, wheels):
    """replace_packages (the CUDA variant locks onnxruntime-gpu instead of onnxruntime): @pypi//gamma, the
    name BUILD files use, is an alias of the replacement; an alias to a distribution the lock lacks fails."""
    proc, repo = run_installer(tmp_path, lock_for(wheels), "--alias", "gamma=beta")
    assert proc.returncode == 0, proc.stderr
    build = (repo / "gamma" / "BUILD.bazel").read_text()
    assert 'alias(\n    name = "gamma",\n    actual = "//beta",\n)' in build
    assert json.loads((repo / "manifest.json").read_text())["aliases"] == {"gamma": "beta"}
    (tmp_path / "bad").mkdir()
    proc, repo = run_installer(tmp_path / "bad", lock_for(wheels), "--alias", "gamma=delta")
    assert proc.returncode == 2
    assert "maps gamma to delta, which the cpu lock does not pin" in proc.stderr
    assert not (repo / "manifest.json").exists()


def test_two_installs_at_different_paths_are_identical_and_tracebacks_show_the_real_source(tmp_path):
    """Checkouts at different paths must produce the same tree, byte for byte (a shared remote cache keys
    actions on it, an image layer is built from it), while code from the tree still names its real file in
    tracebacks and inspect. Each checkout has its own output base, so its own interpreter path: the second
    install runs a copy of the interpreter elsewhere, and the wheel has a console script (its shebang names
    that path). The second is also started from a shell whose Python settings would move or rename byte code."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel = make_wheel(folder, "alpha", "1.0", source="def fail():\n    raise ValueError('from alpha')\n",
                       scripts={"alpha-fail": "alpha:fail"})
    lock = f"--find-links {folder}\n\nalpha==1.0 \\\n    --hash=sha256:{sha256(wheel)}\n"
    elsewhere = tmp_path / "another/output_base/external/mlenv_python"
    shutil.copytree(Path(PYTHON).parent, elsewhere)  # real files: its wrapper resolves to itself
    repos = []
    shell = {"PYTHONPYCACHEPREFIX": str(tmp_path / "pycache"), "PYTHONOPTIMIZE": "2"}
    for sub, python, env in (("one", PYTHON, {}), ("two/deeper/checkout", str(elsewhere / "python3"), shell)):
        (tmp_path / sub).mkdir(parents=True)
        proc, repo = run_installer(tmp_path / sub, lock, python=python, shell=env)
        assert proc.returncode == 0, proc.stderr
        repos.append(repo)
    assert not (tmp_path / "pycache").exists()

    def tree(repo):
        return {p.relative_to(repo): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}
    one, two = tree(repos[0]), tree(repos[1])
    assert one.keys() == two.keys()
    assert [p for p in one if one[p] != two[p]] == []
    record = Path("site-packages/alpha-1.0.dist-info/RECORD")
    assert b"alpha/__init__.py," in one[record] and b"bin/" not in one[record]  # the script is dropped, and its row
    assert not [p for p in one if p.parts[:2] == ("site-packages", "bin")]
    pyc = [p for p in one if p.suffix == ".pyc"]
    assert pyc and not [p for p in pyc if str(tmp_path).encode() in one[p]]
    assert b"site-packages/alpha/__init__.py" in one[pyc[0]]

    site = repos[1] / "site-packages"
    probe = ("import inspect, sys, traceback\nsys.path.insert(0, sys.argv[1])\nimport alpha\n"
             "print(alpha.__cached__ is not None, alpha.fail.__code__.co_filename)\n"
             "print(inspect.getsource(alpha.fail).splitlines()[0])\nalpha.fail()\n")
    proc = subprocess.run([PYTHON, "-S", "-c", probe, str(site)], capture_output=True, text=True, timeout=60)
    source = site / "alpha" / "__init__.py"
    assert proc.stdout.splitlines() == [f"True {source}", "def fail():"], proc.stdout + proc.stderr
    assert f'File "{source}", line 3, in fail' in proc.stderr and "raise ValueError('from alpha')" in proc.stderr


def test_tampered_hash_fails_naming_the_file_and_installs_nothing(tmp_path, wheels):
    proc, repo = run_installer(tmp_path, lock_for(wheels, beta_hash="0" * 64))
    assert proc.returncode == 1
    assert "hash mismatch for beta==2.0" in proc.stderr
    assert "0" * 64 in proc.stderr and sha256(wheels["beta"]) in proc.stderr
    assert "//test:lock.txt" in proc.stderr and "tools/bazel run //third_party/pip:lock" in proc.stderr
    assert not (repo / "manifest.json").exists()


def test_lock_digest_changes_with_the_lock(tmp_path, wheels):
    digests = []
    for sub, suffix in (("a", ""), ("b", "\n")):
        (tmp_path / sub).mkdir()
        proc, repo = run_installer(tmp_path / sub, lock_for(wheels) + suffix)
        assert proc.returncode == 0, proc.stderr
        digests.append((repo / "lock_digest.txt").read_text())
    assert digests[0] != digests[1]


@pytest.mark.parametrize("text,message", [
    ("alpha>=1.0 --hash=sha256:" + "a" * 64 + "\n", "'alpha>=1.0' is not pinned with '=='"),
    ("alpha==1.0\n", "alpha==1.0 has no --hash=sha256"),
    ("--trusted-host example.com\nalpha==1.0 --hash=sha256:" + "a" * 64 + "\n", "option '--trusted-host' is not supported"),
    ("# nothing\n", "no requirements found"),
])
def test_bad_locks_are_refused_with_the_line(text, message):
    with pytest.raises(install_env.LockError, match="lock.txt") as info:
        install_env.parse_lock(text, "lock.txt")
    assert message in str(info.value)


def test_parses_uv_annotations_into_requirements():
    lock = install_env.parse_lock(
        "--index-url https://x/simple\nfoo==1 \\\n  --hash=sha256:%s\n    # via\n    #   bar\n    #   -r requirements.in\n"
        "bar==2 --hash=sha256:%s\n" % ("a" * 64, "b" * 64), "l")
    assert lock.index_url == "https://x/simple"
    assert [(r.key, r.required_by) for r in lock.requirements] == [("foo", ["bar"]), ("bar", [])]


def test_unreachable_private_index_is_reported_without_its_token():
    messages = []
    lock = install_env.Lock([], None, ["https://__token__:pypi-SECRET@no-such-host.invalid/simple"], [])
    install_env.usable_sources(lock, "file:///nowhere", messages.append)
    assert messages == ["extra index https://***@no-such-host.invalid/simple is unreachable (its host does not "
                     "resolve); skipped"]
    assert "SECRET" not in install_env.redact("uv: GET https://user:SECRET@idx/simple/torch failed")
