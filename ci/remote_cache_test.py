"""--config=remote-cache against a real HTTP cache: nginx with WebDAV on loopback, private prefix.

A genrule whose output is different on every execution (it records the nanosecond clock) is built with
`tools/bazel --config=remote-cache` and MLENV_REMOTE_CACHE; a second build in a clean output base must be a
remote cache hit and produce the same bytes, i.e. it did not run locally. The same through .bazelrc.user,
and a missing URL stops with the fix.

Across checkout paths: two copies of a workspace with our WORKSPACE, toolchains and @pypi (a tiny lock over
local wheels), at different paths and so with different output bases. A genrule that runs a py_binary on the
environment (every file of @pypi, its byte code, the interpreter stub are action inputs) is built in the
first, then must be a remote cache hit in the second: any input that embeds the checkout or output-base path
(the byte code's file names once did) makes it miss and this test fail. Both copies are git checkouts of the
same commit, and a rule action there reads Bazel's status files as a bundle and an image config do: it must
hit too, which holds only because tools/workspace_status.sh makes their contents per commit, not per build,
host or user.
"""

import hashlib
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from tools.testing.bazel_workspace import SampleWorkspace, find_bazel
from tools.testing.http_cache import MISSING_NGINX, NginxCache, find_nginx
from tools.testing.wheels import make_wheel

WRAPPER = (".bazelrc", ".bazelversion", "ci/bazelrc", "tools/bazel", "tools/workspace_status.sh")


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory):
    if find_nginx() is None:
        pytest.fail(MISSING_NGINX)
    with NginxCache(tmp_path_factory.mktemp("nginx")) as cache:
        yield cache.url


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    ws = SampleWorkspace.create(tmp_path_factory.mktemp("remote") / "ws")
    for rel in WRAPPER:
        (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rel, ws.root / rel)  # keeps the executable bits
    ws.write("BUILD.bazel", 'genrule(\n    name = "stamp",\n    outs = ["stamp.txt"],\n'
                            '    cmd = "date +%s%N > $@",\n)\n')
    ws = replace(ws, bazel_binary=str(ws.root / "tools/bazel"))  # through our wrapper, as a developer would
    yield ws
    ws.shutdown()


def build(ws, env, targets=("//:stamp",)):
    result = ws.bazel("build", "--config=remote-cache", *targets, env={"BAZEL_REAL": find_bazel(), **env},
                      timeout=900)
    processes = [line for line in result.stderr.splitlines() if " processes: " in line or " process: " in line]
    return result, processes[-1] if processes else "", ws.root


def output(ws, name="stamp.txt"):
    bin_dir = ws.bazel("info", "bazel-bin", env={"BAZEL_REAL": find_bazel()}).stdout.strip()
    return Path(bin_dir, name).read_bytes()


def test_second_clean_output_base_is_served_from_the_cache(sample, cache_url):
    first, processes, _ = build(sample, {"MLENV_REMOTE_CACHE": cache_url})
    assert first.returncode == 0, first.stderr
    assert "remote cache hit" not in processes, processes
    produced = output(sample)

    clean = replace(sample, output_root=sample.root.parent / "ws-output-clean")
    second, processes, _ = build(clean, {"MLENV_REMOTE_CACHE": cache_url})
    try:
        assert second.returncode == 0, second.stderr
        assert "1 remote cache hit" in processes, processes
        assert "linux-sandbox" not in processes and "local" not in processes, processes
        assert output(clean) == produced  # downloaded, not re-executed (the clock would differ)
    finally:
        clean.shutdown()


def test_bazelrc_user_sets_the_url(sample, cache_url):
    (sample.root / ".bazelrc.user").write_text(f"build:remote-cache --remote_cache={cache_url}\n")
    other = replace(sample, output_root=sample.root.parent / "ws-output-user")
    try:
        result, processes, _ = build(other, {})
        assert result.returncode == 0, result.stderr
        assert "1 remote cache hit" in processes, processes
    finally:
        (sample.root / ".bazelrc.user").unlink()
        other.shutdown()


def test_missing_url_is_a_clear_error(sample):
    result, _, _ = build(sample, {})
    assert result.returncode != 0
    assert "MLENV_REMOTE_CACHE" in result.stderr and ".bazelrc.user" in result.stderr, result.stderr


def env_sample(root: Path, wheels: Path, lock: str) -> SampleWorkspace:
    """A workspace with our WORKSPACE, toolchains and @pypi (installing `lock`), and //:stamp: a genrule
    whose tool is a py_binary on that environment, with the clock in its output (a hit is told by its bytes)."""
    ws = SampleWorkspace.create(root)
    for rel in (*WRAPPER, "WORKSPACE", "toolchains", "third_party/pip", "third_party/debian", "tools/lint"):
        ws.copy_in(rel)
    shutil.rmtree(ws.root / "toolchains/python/interpreter_test.py", ignore_errors=True)
    ws.write("third_party/pip/requirements_lock_cpu.txt", lock)
    ws.write("uses_alpha.py", "import alpha\nprint(alpha.greet())\n")
    ws.write("BUILD.bazel", 'load(":stamped.bzl", "stamped")\n'
                            'py_binary(name = "uses_alpha", srcs = ["uses_alpha.py"], deps = ["@pypi//alpha"])\n'
                            'genrule(\n    name = "stamp",\n    outs = ["stamp.txt"],\n    tools = [":uses_alpha"],\n'
                            '    cmd = "$(location :uses_alpha) > $@ && date +%s%N >> $@",\n)\n'
                            'stamped(name = "stamped")\n')
    ws.write("stamped.bzl", STAMPED_RULE)
    # A checkout of one commit, as a CI agent's clone is: the same files, author and dates give the same hash.
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "-C", str(ws.root)]
    dates = {"GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "sample"]):
        subprocess.run([*git, *args], check=True, env={**os.environ, **dates})
    return replace(ws, bazel_binary=str(ws.root / "tools/bazel"))


# Reads both status files, as ModelBundle (volatile: GIT_COMMIT) and the image config (stable) do, plus the clock.
STAMPED_RULE = """def _impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".txt")
    ctx.actions.run_shell(
        outputs = [out],
        inputs = [ctx.version_file, ctx.info_file],
        command = 'grep "^GIT_COMMIT " "$1" > "$3" && grep "^STABLE_GIT_COMMIT " "$2" >> "$3" && date +%s%N >> "$3"',
        arguments = [ctx.version_file.path, ctx.info_file.path, out.path],
        env = {"PATH": "/usr/bin:/bin"},
    )
    return [DefaultInfo(files = depset([out]))]

stamped = rule(implementation = _impl)
"""


def test_a_checkout_at_another_path_is_served_from_the_cache(tmp_path, cache_url):
    wheels = tmp_path / "wheels"  # one folder for both, like a machine's /opt/wheels: the lock names it
    wheels.mkdir()
    alpha = make_wheel(wheels, "alpha", "1.0", source="def greet():\n    return 'hello from alpha'\n")
    lock = (f"--index-url https://pypi.invalid/simple\n--find-links {wheels}\n\n"
            f"alpha==1.0 \\\n    --hash=sha256:{hashlib.sha256(alpha.read_bytes()).hexdigest()}\n")
    first = env_sample(tmp_path / "agent-1" / "ws", wheels, lock)
    second = env_sample(tmp_path / "agent-22" / "build" / "checkout", wheels, lock)
    try:
        targets = ("//:stamp", "//:stamped")
        result, processes, _ = build(first, {"MLENV_REMOTE_CACHE": cache_url}, targets)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "remote cache hit" not in processes, processes
        produced = output(first)
        assert produced.startswith(b"hello from alpha\n"), produced
        stamped = output(first, "stamped.txt")
        commit = subprocess.run(["git", "-C", str(first.root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        assert stamped.startswith(f"GIT_COMMIT {commit}\nSTABLE_GIT_COMMIT {commit}\n".encode()), stamped

        result, processes, _ = build(second, {"MLENV_REMOTE_CACHE": cache_url}, targets)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "2 remote cache hit" in processes and "linux-sandbox" not in processes, (
            f"an action ran again at another checkout path ({processes}): the genrule on @pypi (one of its inputs "
            f"depends on the path; diff the two builds' --execution_log_json_file, tools/bench/cross_path_cache.py) "
            f"or the rule reading the status files (their contents differ per build: tools/workspace_status.sh)")
        assert output(second) == produced
        assert output(second, "stamped.txt") == stamped
    finally:
        first.shutdown()
        second.shutdown()
