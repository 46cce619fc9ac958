"""The @pypi repository rule through real Bazel: a lock is installed into one flat tree with a target per
distribution, and a tampered hash fails the FETCH naming the distribution, both hashes and the fix.

The sample workspace is ours (WORKSPACE, toolchains, third_party/pip) with the CPU lock replaced by a tiny one
over locally built wheels, so nothing but uv itself is downloaded.
"""

import hashlib
import shutil
from pathlib import Path

import pytest

from tools.testing.bazel_workspace import SampleWorkspace
from tools.testing.wheels import make_wheel


def lock_text(wheels: Path, alpha: Path, beta_hash: str) -> str:
    digest = hashlib.sha256(alpha.read_bytes()).hexdigest()
    return (f"# tiny test lock\n--index-url https://pypi.invalid/simple\n--find-links {wheels}\n\n"
            f"alpha==1.0 \\\n    --hash=sha256:{digest}\n    # via -r requirements.in\n"
            f"beta==2.0 \\\n    --hash=sha256:{beta_hash}\n    # via alpha\n")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("fetch")
    ws = SampleWorkspace.create(root / "ws")
    for rel in ("WORKSPACE", "toolchains", "third_party/pip", "third_party/debian", "tools/lint"):  # WORKSPACE loads them
        src = Path.cwd() / rel
        (shutil.copytree(src, ws.root / rel, dirs_exist_ok=True) if src.is_dir()
         else shutil.copy(src, ws.root / rel))
    shutil.rmtree(ws.root / "toolchains/python/interpreter_test.py", ignore_errors=True)
    wheels = root / "wheels"
    wheels.mkdir()
    alpha = make_wheel(wheels, "alpha", "1.0", requires=["beta"])
    beta = make_wheel(wheels, "beta", "2.0")
    ws.write("BUILD.bazel", 'py_binary(name = "uses_alpha", srcs = ["uses_alpha.py"], deps = ["@pypi//alpha"])\n')
    ws.write("uses_alpha.py", "import alpha, beta\nprint('alpha', alpha.VERSION, 'beta', beta.VERSION)\n")
    ws.wheels, ws.alpha, ws.beta = wheels, alpha, beta
    yield ws
    ws.shutdown()


def test_lock_installs_into_one_tree_with_a_target_per_distribution(sample):
    good = hashlib.sha256(sample.beta.read_bytes()).hexdigest()
    sample.write("third_party/pip/requirements_lock_cpu.txt", lock_text(sample.wheels, sample.alpha, good))
    result = sample.bazel("run", "//:uses_alpha")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "alpha 1.0 beta 2.0" in result.stdout
    deps = sample.bazel("query", "deps(@pypi//alpha, 1)")
    assert "@pypi//beta:beta" in deps.stdout and "@pypi//:env" in deps.stdout, deps.stdout


def test_tampered_hash_fails_the_fetch_naming_the_file(sample):
    sample.write("third_party/pip/requirements_lock_cpu.txt", lock_text(sample.wheels, sample.alpha, "0" * 64))
    result = sample.bazel("build", "//:uses_alpha")
    assert result.returncode != 0
    err = result.stderr
    actual = hashlib.sha256(sample.beta.read_bytes()).hexdigest()
    assert "hash mismatch for beta==2.0" in err
    assert "0" * 64 in err and actual in err
    assert "//third_party/pip:requirements_lock_cpu.txt" in err
    assert "tools/bazel run //third_party/pip:lock" in err


def test_a_replaced_package_keeps_its_label(sample):
    """replace_packages (the CUDA variant's onnxruntime -> onnxruntime-gpu): pip_repository.bzl passes each
    replacement's name to the installer, and @pypi//<replaced> is an alias of the installed replacement."""
    import json

    good = hashlib.sha256(sample.beta.read_bytes()).hexdigest()
    sample.write("third_party/pip/requirements_lock_cpu.txt", lock_text(sample.wheels, sample.alpha, good))
    config_path = sample.root / "toolchains/accelerators.json"
    original = config_path.read_text()
    config = json.loads(original)
    config["variants"]["cpu"]["replace_packages"] = {"gamma": "beta[extra]==2.0"}
    config_path.write_text(json.dumps(config))
    try:
        sample.write("BUILD.bazel", 'py_binary(name = "uses_gamma", srcs = ["uses_gamma.py"], deps = ["@pypi//gamma"])\n')
        sample.write("uses_gamma.py", "import beta\nprint('beta', beta.VERSION)\n")
        result = sample.bazel("run", "//:uses_gamma")
        assert result.returncode == 0, result.stderr[-4000:]
        assert "beta 2.0" in result.stdout
        query = sample.bazel("query", "--output=build", "@pypi//gamma")
        assert 'actual = "@pypi//beta:beta"' in query.stdout, query.stdout + query.stderr
    finally:
        config_path.write_text(original)
