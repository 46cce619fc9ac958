"""Real Bazel on a sample workspace that uses our rules exactly the way ml/ does.

The sample gets copies of WORKSPACE, .bazelrc, tools/rules, toolchains, third_party/pip, third_party/debian
(WORKSPACE loads it) and ml/engine, and reuses this build's installed @pypi (--override_repository) instead
of installing 3 GB again. It checks:
- the default suite runs ml_py_test, the `_cpu` variant of an ml_gpu_test and an ml_trainer_integration_test
  (on the engine's toy trainer), and skips the GPU variant;
- ml_py_test writes JUnit XML and honours --test_filter;
- --config=gpu on this GPU-less machine FAILS the GPU test with the gate's message (never a silent pass);
- a bad attribute fails the build naming the target, the value and the fix.
"""

import shutil
import xml.etree.ElementTree as ET

import pytest

from tools.testing.bazel_workspace import SampleWorkspace, runfiles_repo

COPY = ["WORKSPACE", ".bazelrc", "ci/bazelrc", "tools/workspace_status.sh", "tools/rules", "toolchains", "third_party/pip",
        "third_party/debian", "ml/engine", "tools/lint"]

SAMPLE_BUILD = '''
load("//tools/rules:gpu_test.bzl", "ml_gpu_test")
load("//tools/rules:python.bzl", "ml_py_binary", "ml_py_test")
load("//tools/rules:trainer_test.bzl", "ml_trainer_integration_test")

ml_py_test(
    name = "unit_test",
    srcs = ["unit_test.py"],
    deps = ["@pypi//numpy"],
)

ml_gpu_test(
    name = "device_test",
    srcs = ["device_test.py"],
    cpu_fallback = True,
    deps = ["@pypi//torch"],
)

ml_py_binary(
    name = "train",
    srcs = ["train.py"],
    main = "train.py",
    deps = ["//ml/engine:toy"],
)

ml_trainer_integration_test(
    name = "train_it",
    args = ["--batch-size=64", "--set=rows=1024", "--lr=0.01"],
    checkpoint_every = 4,
    steps = 16,
    trainer = ":train",
)
'''


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    ws = SampleWorkspace.create(tmp_path_factory.mktemp("e2e") / "ws")
    for relative in COPY:
        ws.copy_in(relative)
    shutil.rmtree(ws.root / "tools/rules/tests", ignore_errors=True)  # this very test and its fixtures
    ws.write("sample/BUILD.bazel", SAMPLE_BUILD)
    ws.write("sample/unit_test.py", "import numpy as np\n\ndef test_one():\n    assert np.arange(3).sum() == 3\n\n"
                                    "def test_two():\n    assert np.ones(2).mean() == 1.0\n")
    ws.write("sample/device_test.py", "import os\nimport torch\n\ndef test_device():\n"
                                      "    device = os.environ['MLENV_TEST_DEVICE']\n"
                                      "    assert torch.ones(1, device=device).device.type == device\n")
    ws.write("sample/train.py", "import sys\nfrom ml.engine.testing.toy import main\n\nsys.exit(main())\n")
    pypi = (runfiles_repo("pypi") / "site-packages").resolve().parent  # this build's installed environment
    ws.write(".bazelrc.user", f"build --override_repository=pypi={pypi}\n")
    yield ws
    ws.shutdown()


def test_default_suite_runs_cpu_tests_and_skips_gpu_variant(sample):
    result = sample.bazel("test", "//sample/...")
    assert result.returncode == 0, result.stderr[-6000:]
    out = result.stderr + result.stdout
    for target in ("//sample:unit_test", "//sample:device_test_cpu", "//sample:train_it"):
        assert f"{target} " in out and "PASSED" in out.split(f"{target} ", 1)[1].splitlines()[0], target
    assert "//sample:device_test " not in out  # tagged gpu: not part of the default suite


def test_junit_xml_and_test_filter(sample):
    result = sample.bazel("test", "//sample:unit_test", "--test_filter=test_two", "--nocache_test_results")
    assert result.returncode == 0, result.stderr[-3000:]
    xml = sample.root / "bazel-testlogs/sample/unit_test/test.xml"
    names = [case.get("name") for case in ET.parse(xml).getroot().iter("testcase")]  # noqa: S314 - Bazel's own test.xml
    assert names == ["test_two"]


def test_gpu_config_fails_loudly_without_a_gpu(sample):
    result = sample.bazel("test", "--config=gpu", "//sample:device_test")
    assert result.returncode != 0
    log = (sample.root / "bazel-testlogs/sample/device_test/test.log").read_text()
    assert "ml_gpu_test //sample:device_test FAILED: it needs 1 usable NVIDIA GPU(s)" in log
    assert "no usable NVIDIA driver" in log


def test_bad_attribute_fails_naming_target_value_and_fix(sample):
    sample.write("bad/BUILD.bazel", 'load("//tools/rules:gpu_test.bzl", "ml_gpu_test")\n\n'
                                    'ml_gpu_test(name = "t", srcs = ["t.py"], gpus = 0)\n')
    sample.write("bad/t.py", "def test_t():\n    pass\n")
    result = sample.bazel("build", "//bad:t")
    assert result.returncode != 0
    assert "ml_gpu_test(//bad:t): gpus must be >= 1, got 0; use ml_py_test for tests that need no GPU" in result.stderr
