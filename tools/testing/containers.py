"""Run ml_image images from tests without a Docker daemon.

    runner = pick_runner(tmp_path)          # podman (runc), then docker, then unpack + chroot
    image = runner.load(Path("serve_image.tar"))
    proc = runner.run(image, ["--port=9001"], volumes={host_dir: "/workspace"})
    ...
    runner.stop(proc); runner.cleanup()

`pick_runner` tries, in order: podman with runc and a private store (the settings that work on a
daemonless Debian host as root: runc instead of crun, explicit ulimits, cgroupfs, file events, overlay
storage), docker when a daemon answers, and as a last resort unpacking the layers and running the
entrypoint under `unshare` + `chroot` (root only). It raises Unavailable, with the reason for each, when
none can run here; tests turn that into a skip. `MLENV_CONTAINER_RUNNER=podman|docker|chroot` forces one.
All of them use the host network, so tests reach servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path


class Unavailable(Exception):
    """No way to run containers here; the message says why for each runner tried."""


def _ok(cmd: list[str], timeout: float = 30) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Podman:
    name = "podman"

    def __init__(self, work: Path):
        self.work = work
        root = work / "root"
        root.mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot over 50 characters (its sockets live there): take a short one.
        self.runroot = Path(tempfile.mkdtemp(prefix="podrun-", dir="/tmp" if len(tempfile.gettempdir()) > 30 else None))
        run = self.runroot
        self.base = ["podman", "--root", str(root), "--runroot", str(run), "--storage-driver", "overlay",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        self.run_flags = ["--runtime", "runc", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
                          "--network", "host"]

    def cmd(self, *args: str) -> list[str]:
        return self.base + list(args)

    def load(self, image: Path) -> str:
        """Loads a tarball or an OCI layout folder; returns the image id (the config digest)."""
        out = subprocess.run(self.cmd("load", "-q", "-i", str(image)), capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"podman load {image} failed: {out.stderr.strip()}")
        return _config_digest(image)

    def run(self, image: str, args: list[str], *, volumes: dict[Path, str] | None = None,
            env: dict[str, str] | None = None, name: str | None = None, **popen) -> subprocess.Popen:
        flags = list(self.run_flags)
        for host, inside in (volumes or {}).items():
            flags += ["-v", f"{host}:{inside}"]
        for key, value in (env or {}).items():
            flags += ["-e", f"{key}={value}"]
        if name:
            flags += ["--name", name]
        return subprocess.Popen(self.cmd("run", "--rm", *flags, image, *args), **popen)

    def stop(self, proc: subprocess.Popen, name: str | None = None, timeout: float = 30) -> int:
        if name:
            subprocess.run(self.cmd("stop", "-t", str(int(timeout)), name), capture_output=True, timeout=timeout + 30)
        else:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout + 30)

    def inspect(self, image: str) -> dict:
        out = subprocess.run(self.cmd("image", "inspect", image), capture_output=True, text=True, check=True)
        return json.loads(out.stdout)[0]

    def cleanup(self) -> None:
        subprocess.run(self.cmd("rm", "-af"), capture_output=True)
        subprocess.run(self.cmd("system", "reset", "-f"), capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


class Docker(Podman):
    name = "docker"

    def __init__(self, work: Path):
        self.work = work
        self.base = ["docker"]
        self.run_flags = ["--network", "host"]

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class Chroot:
    """Last resort: the layers unpacked in order into a folder, the entrypoint run under unshare + chroot."""

    name = "chroot"

    def __init__(self, work: Path):
        self.work = work
        self.images: dict[str, tuple[Path, dict]] = {}

    def load(self, image: Path) -> str:
        layout = image
        if image.is_file():
            layout = self.work / ("layout-" + image.stem)
            with tarfile.open(image) as tar:
                tar.extractall(layout)  # noqa: S202 - an image this build made
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_text())
        config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
        rootfs = self.work / ("rootfs-" + manifest["config"]["digest"].split(":")[1][:12])
        rootfs.mkdir(parents=True, exist_ok=True)
        for layer in manifest["layers"]:
            with tarfile.open(_blob(layout, layer["digest"])) as tar:
                tar.extractall(rootfs, numeric_owner=True)  # noqa: S202 - our own layers
        image_id = manifest["config"]["digest"]
        self.images[image_id] = (rootfs, config["config"])
        return image_id

    def run(self, image: str, args: list[str], *, volumes: dict[Path, str] | None = None,
            env: dict[str, str] | None = None, name: str | None = None, **popen) -> subprocess.Popen:
        rootfs, config = self.images[image]
        mounts = [f"mount --rbind /dev {rootfs}/dev"]
        for host, inside in (volumes or {}).items():
            (rootfs / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind {host} {rootfs}{inside}")
        (rootfs / "dev").mkdir(exist_ok=True)
        (rootfs / "proc").mkdir(exist_ok=True)
        environment = dict(e.split("=", 1) for e in config.get("Env", []))
        environment.update(env or {})
        user = config.get("User") or "0:0"
        argv = config.get("Entrypoint", []) + (args or config.get("Cmd", []))
        workdir = config.get("WorkingDir") or "/"
        script = " && ".join(mounts) + " && exec chroot --userspec=" + user + " " + str(rootfs) + \
            " /usr/bin/env -i " + " ".join(_q(f"{k}={v}") for k, v in environment.items()) + \
            " /bin/sh -c " + _q(f"cd {workdir} && exec " + " ".join(_q(a) for a in argv))
        return subprocess.Popen(["unshare", "-m", "-p", "-f", f"--mount-proc={rootfs}/proc", "sh", "-c", script],
                                **popen)

    def stop(self, proc: subprocess.Popen, name: str | None = None, timeout: float = 30) -> int:
        proc.send_signal(signal.SIGTERM)  # unshare forwards nothing; the pid-1 sh execs into the program
        return proc.wait(timeout=timeout + 30)

    def inspect(self, image: str) -> dict:
        return {"Config": self.images[image][1]}

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _blob(layout: Path, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return layout / "blobs" / algo / hexd


def _config_digest(image: Path) -> str:
    if image.is_dir():
        index = json.loads((image / "index.json").read_text())
        manifest = json.loads(_blob(image, index["manifests"][0]["digest"]).read_text())
        return manifest["config"]["digest"]
    with tarfile.open(image) as tar:
        docker = json.loads(tar.extractfile("manifest.json").read())
    return "sha256:" + docker[0]["Config"].rsplit("/", 1)[1]


def pick_runner(work: Path) -> Podman | Docker | Chroot:
    forced = os.environ.get("MLENV_CONTAINER_RUNNER")
    reasons = []
    if forced in (None, "podman"):
        if shutil.which("podman") and shutil.which("runc"):
            return Podman(work / "podman")
        reasons.append("podman: podman or runc not installed (apt-get install podman runc)")
    if forced in (None, "docker"):
        if shutil.which("docker") and _ok(["docker", "info"]):
            return Docker(work / "docker")
        reasons.append("docker: no docker CLI with a reachable daemon")
    if forced in (None, "chroot"):
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("chroot"):
            return Chroot(work / "chroot")
        reasons.append("chroot: needs root with unshare and chroot")
    raise Unavailable("no container runner here: " + "; ".join(reasons))
