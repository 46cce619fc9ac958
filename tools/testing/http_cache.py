"""A real HTTP cache for Bazel's --remote_cache on loopback: nginx with WebDAV (GET/PUT), private prefix.

    with NginxCache(tmp_path / "cache") as cache:
        bazel build --remote_cache=<cache.url> ...

Used by //ci:remote_cache_test and tools/bench/presubmit_bench.py. Needs Debian's nginx-core (WebDAV module).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["MISSING_NGINX", "NginxCache", "find_nginx"]

MISSING_NGINX = "nginx is not installed; it serves Bazel's HTTP cache here: apt-get install nginx-core"

_CONF = """
# As root, nginx would hand its temp folders to `nobody` (unmappable in Bazel's sandbox): keep our own ids.
user {user} {group};
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
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


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NginxCache:
    """nginx serving `prefix`/cache over HTTP on a free loopback port; `url` is the --remote_cache value."""

    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.url = ""
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> NginxCache:
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError(MISSING_NGINX)
        for sub in ("cache", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        port = _free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(_CONF.format(prefix=self.prefix, port=port, user=pwd.getpwuid(os.getuid()).pw_name,
                                     group=grp.getgrgid(os.getgid()).gr_name))
        self._proc = subprocess.Popen([nginx, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(conf)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/ac/absent", timeout=1)
            except urllib.error.HTTPError:
                return self  # 404: serving
            except OSError:
                if self._proc.poll() is not None:
                    log = (self.prefix / "error.log").read_text() if (self.prefix / "error.log").exists() else ""
                    raise RuntimeError(f"nginx exited: {self._proc.stdout.read().decode()} {log}") from None
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not answer on {self.url} within 20 s")

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.prefix / "cache").rglob("*") if f.is_file())
