"""A real PostgreSQL server for the sweep tests (Debian's `postgresql`), started on loopback and stopped after.

initdb refuses root, so the server runs as the unprivileged `postgres` user in a folder it owns under /tmp
(the test's temp dir lives under root's 0700 home). It listens on 127.0.0.1 of the caller's network
namespace, so a test inside `unshare -n` gets a server only its own processes reach. Missing tools fail
the test, with the package to install: these tests need a real server and never skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["postgres_server"]

PG_BIN = Path("/usr/lib/postgresql")
USER = "postgres"


class PostgresMissing(RuntimeError):
    """The machine lacks what a real server needs; the message names the package."""


def _pg_tool(name: str) -> str:
    found = sorted(PG_BIN.glob(f"*/bin/{name}"))
    if not found:
        raise PostgresMissing(f"PostgreSQL's {name} is missing: install Debian's `postgresql` package "
                              "(apt-get install postgresql); this test needs a real server and never skips")
    return str(found[-1])


@contextlib.contextmanager
def postgres_server(database: str = "sweeps") -> Iterator[str]:
    """Yields postgresql+psycopg://mlenv@127.0.0.1:PORT/<database>; the server and its folder are gone after."""
    initdb, pg_ctl, psql = _pg_tool("initdb"), _pg_tool("pg_ctl"), _pg_tool("psql")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise PostgresMissing("no `postgres` user to run the server as (initdb refuses root); install Debian's "
                              "postgresql") from None
    # Bazel's test PATH has no sbin folders.
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not runuser:
        raise PostgresMissing("`runuser` (util-linux) is missing: it starts PostgreSQL as the unprivileged "
                              "postgres user")
    as_user = [runuser, "-u", USER, "--"]
    folder = Path(tempfile.mkdtemp(prefix="mlenv-sweep-pg-", dir="/tmp"))
    data = folder / "data"
    started = False
    try:
        os.chmod(folder, 0o755)  # noqa: S103 - the postgres user must reach its data folder
        shutil.chown(folder, USER)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "mlenv"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", f"-h 127.0.0.1 -p {port} -k {folder}",
                        "-l", str(folder / "server.log"), "-w", "start"], check=True, capture_output=True,
                       timeout=120)
        started = True
        subprocess.run([*as_user, psql, "-h", "127.0.0.1", "-p", str(port), "-U", "mlenv", "-d", "postgres",
                        "-c", f"CREATE DATABASE {database}"], check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://mlenv@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                           timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
