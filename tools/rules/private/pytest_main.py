"""Entry point of every ml_py_test: runs the test files under pytest the way Bazel expects.

- JUnit XML into $XML_OUTPUT_FILE, so Bazel (and CI) see each test case;
- `bazel test --test_filter=EXPR` arrives as $TESTBRIDGE_TEST_ONLY and becomes `pytest -k EXPR`;
- shard_count: $TEST_TOTAL_SHARDS / $TEST_SHARD_INDEX select every N-th collected test;
- HOME and caches point into $TEST_TMPDIR, so tests never share or leak state through the real HOME;
  TMPDIR is a short private folder (AF_UNIX socket paths must fit in 108 bytes);
- a filter or shard that selects nothing fails instead of passing vacuously;
- a skip is never a pass in CI: Bazel has no "skipped" status, so a skipped case would show as PASSED. With
  MLENV_FAIL_ON_SKIP=1 (set by --config=ci, ci/bazelrc) any skip fails the test, naming each skip and its
  reason; without it the skips are listed in a loud banner in the test log, and tools/bazel lists them after
  `tools/bazel test` (from each test.xml).
"""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

FAIL_ON_SKIP = "MLENV_FAIL_ON_SKIP"


class _Skips:
    """Collects the test cases pytest skipped (expected failures are not skips), with their reasons."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _report_skips(skips: list[tuple[str, str]], code: int) -> int:
    if not skips:
        return code
    lines = "\n".join(f"  SKIPPED {nodeid}: {reason}" for nodeid, reason in skips)
    if os.environ.get(FAIL_ON_SKIP) == "1":
        print(f"ml_py_test: {len(skips)} test case(s) skipped under --config=ci, where a skip is a failure (it would "
              f"show as PASSED and hide what was never tested):\n{lines}\nInstall what each reason names on the CI "
              f"machine, or run the test where it can run.", file=sys.stderr)
        return code or 1
    bar = "!" * 100
    print(f"\n{bar}\nml_py_test: {len(skips)} test case(s) SKIPPED; Bazel still reports this test PASSED, and "
          f"--config=ci fails it:\n{lines}\n{bar}", file=sys.stderr)
    return code


class _Shard:
    def __init__(self, index: int, total: int) -> None:
        self.index, self.total = index, total

    def pytest_collection_modifyitems(self, config, items):
        keep = [item for i, item in enumerate(items) if i % self.total == self.index]
        deselected = [item for i, item in enumerate(items) if i % self.total != self.index]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = keep


_SHORT_TMP = "MLENV_TEST_SHORT_TMPDIR"  # "PID:PATH" of the short TMPDIR below


def main() -> int:
    sys.dont_write_bytecode = True  # runfiles point into the source tree; never litter it with __pycache__
    tmp = os.environ.get("TEST_TMPDIR")
    if tmp:
        os.environ["HOME"] = tmp
        # TMPDIR must stay SHORT: multiprocessing puts AF_UNIX sockets there (DataLoader workers pass tensors
        # through them), and Bazel's TEST_TMPDIR is longer than the 108-byte socket path limit, which makes
        # workers hang. pytest's tmp_path still lives inside TEST_TMPDIR (--basetemp below).
        # A test that re-executes itself (the Ray tests, under `unshare -n`) keeps its process and this folder:
        # exec skips atexit, so a new folder per exec would be left behind. Keyed by pid: a child process
        # running this runner gets a folder of its own.
        mine = os.environ.get(_SHORT_TMP, "").partition(":")
        short = mine[2] if mine[0] == str(os.getpid()) and os.path.isdir(mine[2]) else tempfile.mkdtemp(prefix="mlenv-test-")
        os.environ[_SHORT_TMP] = f"{os.getpid()}:{short}"
        atexit.register(shutil.rmtree, short, ignore_errors=True)
        os.environ["TMPDIR"] = short
        tempfile.tempdir = None
        os.environ.setdefault("XDG_CACHE_HOME", os.path.join(tmp, ".cache"))
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, ".matplotlib"))
    argv = list(sys.argv[1:])
    while argv and argv[0].startswith("--mlenv-env="):  # set by the ml_py_test macro (env_vars)
        key, _, value = argv.pop(0).removeprefix("--mlenv-env=").partition("=")
        os.environ[key] = value
    args = argv + ["-p", "no:cacheprovider", "--import-mode=importlib", "-ra"]
    if tmp:
        args += ["--basetemp", os.path.join(tmp, "pytest")]
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args += ["--junitxml", xml, "-o", "junit_family=xunit2"]
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    skips = _Skips()
    plugins = [skips]
    total = int(os.environ.get("TEST_TOTAL_SHARDS", "0") or 0)
    if total > 1:
        status = os.environ.get("TEST_SHARD_STATUS_FILE")
        if status:
            open(status, "w").close()  # tells Bazel this runner understands sharding
        plugins.append(_Shard(int(os.environ["TEST_SHARD_INDEX"]), total))
    code = _report_skips(skips.skipped, int(pytest.main(args, plugins=plugins)))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        if total > 1:
            return 0  # more shards than tests: an empty shard is fine
        why = f" (--test_filter={test_filter!r} matched nothing)" if test_filter else ""
        print(f"ml_py_test: no test was collected{why}; failing instead of passing vacuously", file=sys.stderr)
        return 1
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
