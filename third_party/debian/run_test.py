"""The base layer runs: unpacked into a temp dir, its own /usr/bin/python3.11 runs in a chroot (private mount,
pid and network namespaces) with nothing from the host but /dev, and imports the standard library's native
modules, then the whole locked environment (@pypi, bind-mounted read-only at /opt/mlenv/site-packages).

That proves the layer holds every OS library the environment needs. Needs root (CI and our machines run as
root); elsewhere the tests skip saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tools.testing.bazel_workspace import runfiles_repo

LAYER = Path("third_party/debian/base_layer.tar")
# @pypi//:env in the runfiles (`pypi` under WORKSPACE, `_main~mlenv~pypi` or `+` under Bzlmod).
SITE_PACKAGES = runfiles_repo("pypi") / "site-packages"
IMAGE_SITE_PACKAGES = "/opt/mlenv/site-packages"
# What an image built on this layer sets (docs/debian-base.md).
IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
             "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1) to chroot into the unpacked layer")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rootfs")
    with tarfile.open(LAYER) as tar:
        tar.extractall(root, numeric_owner=True)  # noqa: S202 - the layer this build made
    return root


def in_chroot(root: Path, argv: list[str], env: dict[str, str] | None = None, binds: dict[str, Path] | None = None,
              timeout: int = 240) -> subprocess.CompletedProcess:
    """Runs argv inside `root` with only /dev (and `binds`, read-only) from the host."""
    mounts = [f"mount --rbind /dev {root}/dev"]
    for inside, outside in (binds or {}).items():
        target = root / inside.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind {outside} {target} && mount -o remount,bind,ro {target}")
    script = " && ".join(mounts) + ' && exec env -i "$@"'
    full_env = [f"{k}={v}" for k, v in {**IMAGE_ENV, **(env or {})}.items()]
    cmd = ["unshare", "-m", "-p", "-f", "-n", f"--mount-proc={root}/proc", "/bin/sh", "-c", script, "sh",
           *full_env, shutil.which("chroot") or "/usr/sbin/chroot", str(root), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


STDLIB_CHECK = """
import bz2, ctypes, dbm, hashlib, json, lzma, os, readline, socket, sqlite3, ssl, sys, time, uuid, zlib
assert sys.version_info[:2] == (3, 11), sys.version
assert ssl.create_default_context().cert_store_stats()["x509_ca"] > 100, "no CA bundle"
assert sqlite3.connect(":memory:").execute("select sqlite_version()").fetchone()[0]
assert lzma.decompress(lzma.compress(b"x")) == b"x" and bz2.decompress(bz2.compress(b"x")) == b"x"
assert ctypes.CDLL("libc.so.6").getpid() == os.getpid()
assert time.tzname == ("UTC", "UTC"), time.tzname
assert socket.getservbyname("https") == 443, "no /etc/services"
import pwd; assert pwd.getpwnam("nonroot").pw_uid == 65532
assert not os.path.exists("/etc/ld.so.cache")  # libraries are found by Debian's built-in multiarch paths
print("stdlib ok", ssl.OPENSSL_VERSION)
"""


def test_stdlib_runs_in_the_layer(rootfs):
    result = in_chroot(rootfs, ["/usr/bin/python3.11", "-c", STDLIB_CHECK])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "stdlib ok" in result.stdout
    shell = in_chroot(rootfs, ["/bin/sh", "-c", 'echo "sh works: $0"'])
    assert shell.returncode == 0 and "sh works" in shell.stdout, shell.stderr


ENV_CHECK = """
import grpc, mlflow, pyarrow, tensorflow as tf, torch, tritonclient.grpc
assert torch.ones(2, 3).sum().item() == 6.0
assert float(tf.reduce_sum(tf.ones((2, 3)))) == 6.0
assert pyarrow.array([1, 2]).sum().as_py() == 3
print("env ok", torch.__version__, tf.__version__, mlflow.__version__, grpc.__version__)
"""


def test_locked_environment_imports_in_the_layer(rootfs):
    site_packages = SITE_PACKAGES.resolve()
    assert (site_packages / "torch").is_dir(), f"no @pypi site-packages at {site_packages}"
    result = in_chroot(rootfs, ["/usr/bin/python3.11", "-c", ENV_CHECK],
                       env={"PYTHONPATH": IMAGE_SITE_PACKAGES, "TF_CPP_MIN_LOG_LEVEL": "2"},
                       binds={IMAGE_SITE_PACKAGES: site_packages})
    assert result.returncode == 0, result.stderr[-6000:]
    assert "env ok" in result.stdout
