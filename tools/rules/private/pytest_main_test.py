"""pytest_main's skip policy: under --config=ci (MLENV_FAIL_ON_SKIP=1) a skipped case fails its test with the
reason; otherwise the test passes and its log lists the skip in a banner. Runs the real runner on a scratch
test file in a child process."""

import os
import subprocess
import sys
from pathlib import Path

RUNNER = Path(__file__).with_name("pytest_main.py")

SAMPLE = '''
import pytest


def test_runs():
    assert 1 + 1 == 2

def test_needs_a_tool():
    pytest.skip("podman is not installed: apt-get install podman")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
'''


def _run(tmp_path: Path, fail_on_skip: str | None, body: str = SAMPLE,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    (tmp_path / "sample_test.py").write_text(body)
    env = {k: v for k, v in os.environ.items()
           if k not in ("XML_OUTPUT_FILE", "TESTBRIDGE_TEST_ONLY", "TEST_TOTAL_SHARDS", "TEST_SHARD_INDEX",
                        "TEST_SHARD_STATUS_FILE", "MLENV_FAIL_ON_SKIP")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["TEST_TMPDIR"] = str(tmp_path / "child-tmp")  # the child's own (pytest's basetemp must not hold its cwd)
    (tmp_path / "child-tmp").mkdir(exist_ok=True)
    if fail_on_skip is not None:
        env["MLENV_FAIL_ON_SKIP"] = fail_on_skip
    env.update(extra_env or {})
    python = [sys.executable, *(["-S"] if sys.flags.no_site else [])]
    return subprocess.run([*python, str(RUNNER), str(tmp_path / "sample_test.py")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path / "child-tmp")


def test_a_skip_fails_the_test_under_ci_naming_the_reason(tmp_path):
    result = _run(tmp_path, "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 test case(s) skipped under --config=ci" in result.stderr
    assert "SKIPPED sample_test.py::test_needs_a_tool: podman is not installed: apt-get install podman" in result.stderr


def test_a_skip_passes_locally_with_a_loud_banner(tmp_path):
    result = _run(tmp_path, "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 test case(s) SKIPPED; Bazel still reports this test PASSED" in result.stderr
    assert "test_needs_a_tool: podman is not installed" in result.stderr


def test_without_skips_ci_passes_and_shows_no_banner(tmp_path):
    clean = _run(tmp_path, "1", "def test_ok():\n    assert True\n")
    assert clean.returncode == 0 and "SKIPPED" not in clean.stderr, clean.stderr


REEXEC = """
import os
import sys

if os.environ.get("SAMPLE_REEXECUTED") != "1":  # as the Ray tests do, under `unshare -n`
    os.environ["SAMPLE_REEXECUTED"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def test_ok():
    assert os.environ["SAMPLE_REEXECUTED"] == "1"
    open("ran-after-reexec", "w").close()  # stdout is pytest's capture file by now: it does not come back
"""


def test_a_test_that_reexecutes_itself_leaves_no_temp_folder(tmp_path):
    tmpdir = tmp_path / "t"
    tmpdir.mkdir()
    result = _run(tmp_path, "1", REEXEC, extra_env={"TMPDIR": str(tmpdir)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "child-tmp" / "ran-after-reexec").is_file()
    assert list(tmpdir.iterdir()) == []
