"""--config=remote-cache against a real HTTP cache: nginx with WebDAV on loopback, private prefix.

A genrule whose output is different on every execution (it records the nanosecond clock) is built with
`tools/bazel --config=remote-cache` and MLENV_REMOTE_CACHE; a second build in a clean output base must be a
remote cache hit and produce the same bytes, i.e. it did not run locally. The same through .bazelrc.user,
and a missing URL stops with the fix.
"""

import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from tools.testing.bazel_workspace import SampleWorkspace, find_bazel

NGINX_CONF = """
# As root, nginx would hand its temp folders to `nobody` (unmappable in Bazel's sandbox): keep our own ids.
user {user} {group};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/cache;
        client_max_body_size 0;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if nginx is None:
        pytest.fail("nginx is not installed; this test serves Bazel's HTTP cache with it: apt-get install nginx-core")
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "cache").mkdir()
    (prefix / "tmp").mkdir()
    port = free_port()
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=port, user=pwd.getpwuid(os.getuid()).pw_name,
                                                         group=grp.getgrgid(os.getgid()).gr_name))
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/ac/absent", timeout=1)
        except urllib.error.HTTPError:
            break  # 404: serving
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stdout.read().decode()} {(prefix / 'error.log').read_text()}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    ws = SampleWorkspace.create(tmp_path_factory.mktemp("remote") / "ws")
    for rel in (".bazelrc", ".bazelversion", "ci/bazelrc", "tools/bazel", "tools/workspace_status.sh"):
        (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rel, ws.root / rel)  # keeps the executable bits
    ws.write("BUILD.bazel", 'genrule(\n    name = "stamp",\n    outs = ["stamp.txt"],\n'
                            '    cmd = "date +%s%N > $@",\n)\n')
    ws = replace(ws, bazel_binary=str(ws.root / "tools/bazel"))  # through our wrapper, as a developer would
    yield ws
    ws.shutdown()


def build(ws, env):
    result = ws.bazel("build", "--config=remote-cache", "//:stamp", env={"BAZEL_REAL": find_bazel(), **env})
    processes = [line for line in result.stderr.splitlines() if " processes: " in line or " process: " in line]
    return result, processes[-1] if processes else "", ws.root


def output(ws):
    bin_dir = ws.bazel("info", "bazel-bin", env={"BAZEL_REAL": find_bazel()}).stdout.strip()
    return Path(bin_dir, "stamp.txt").read_bytes()


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
