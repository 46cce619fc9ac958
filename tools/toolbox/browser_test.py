"""The toolbox in a real browser: train a tiny real run, run the two commands the trainer printed, and check
in headless Chromium what a person would see.

- the toy trainer (the engine's real loop) records a run into a scratch workspace's embedded MLflow store and
  TensorBoard folder, and prints the `//tools:mlflow` and `//tools:tensorboard` commands;
- those exact arguments are run through the real binaries (plus `--port 0`: tests share the machine);
- MLflow's run page must show the run's name and a metric; TensorBoard must show scalar charts' tags;
- screenshots go to $TEST_UNDECLARED_OUTPUTS_DIR (bazel-testlogs/.../test.outputs/) for a person to look at;
- SIGTERM stops each server: exit 0, and nothing listens on its port any more.
"""

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tools.testing.browser import MISSING_CHROMIUM, HeadlessChromium, find_chromium

TRAIN = str(Path("ml/engine/toy_train").resolve())
BINARIES = {"//tools:mlflow": str(Path("tools/toolbox/mlflow").resolve()),
            "//tools:tensorboard": str(Path("tools/toolbox/tensorboard").resolve())}
RUN_NAME = "browser-tiny-run"


def outputs_dir(tmp_path) -> Path:
    return Path(os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR") or tmp_path / "outputs")


def workspace_env(workspace):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["BUILD_WORKSPACE_DIRECTORY"] = str(workspace)
    return env


def printed_commands(stderr: str) -> dict[str, list[str]]:
    """The toolbox commands from the trainer's closing lines, as argument lists after `--`."""
    closing = stderr[stderr.rindex("mlenv: done at step"):]
    commands = {}
    for label in ("mlflow", "tensorboard"):
        line = re.search(rf"^  {label}: +(.*)$", closing, re.M).group(1)
        argv = shlex.split(line)
        assert argv[:3] == ["tools/bazel", "run", f"//tools:{label}"] and argv[3] == "--", line
        commands[argv[2]] = argv[4:]
    return commands


class Server:
    """One toolbox binary, its stdout read line by line until it prints its URL."""

    def __init__(self, binary: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} (exit code {self.proc.poll()}); stdout: {self.stdout}; "
                             f"stderr: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.log.close()
        return code


def nothing_listens_on(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_printed_commands_open_the_run_in_a_real_browser(tmp_path):
    if find_chromium() is None:
        pytest.fail(MISSING_CHROMIUM)  # never a skip: a missing browser must not pass as a green test
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = workspace_env(workspace)
    trained = subprocess.run([TRAIN, "--epochs", "2", "--batch-size", "128", "--log-every", "2", "--set",
                              f"run_name={RUN_NAME}"], capture_output=True, text=True, env=env, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    commands = printed_commands(trained.stderr)
    assert "--run" in commands["//tools:mlflow"] and "--logdir" in commands["//tools:tensorboard"]

    servers = {target: Server(BINARIES[target], [*args, "--port", "0"], env, tmp_path / f"{target[8:]}.log")
               for target, args in commands.items()}
    try:
        mlflow_url = servers["//tools:mlflow"].wait_for(r"^MLflow UI: (http://127\.0\.0\.1:(\d+))", 240)
        assert "listening on 127.0.0.1 only" in "".join(servers["//tools:mlflow"].stdout)
        run_page = servers["//tools:mlflow"].wait_for(rf"^run {RUN_NAME}: (http://\S+/#/experiments/\S+/runs/\S+)",
                                                      10).group(1)
        board = servers["//tools:tensorboard"].wait_for(r"^TensorBoard: (http://127\.0\.0\.1:(\d+))", 240)

        out = outputs_dir(tmp_path)
        with HeadlessChromium(tmp_path / "chromium") as browser:
            text = browser.open_until(run_page, [RUN_NAME, "train/loss", "eval/auc"], timeout_s=120)
            browser.screenshot(out / "mlflow_run_page.png")
            assert "FINISHED" in text.upper() or "Finished" in text
            # A chart's title shows its tag as the group ("eval") over the rest ("/auc"): join them as seen.
            browser.open_until(board.group(1) + "/#timeseries", ["eval/auc", "eval/logloss", "train"],
                               timeout_s=120, normalize=lambda text: re.sub(r"\s*\n\s*/", "/", text))
            browser.screenshot(out / "tensorboard_scalars.png")
        for name in ("mlflow_run_page.png", "tensorboard_scalars.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10_000
    finally:
        codes = {target: server.stop() for target, server in servers.items()}
    assert codes == {"//tools:mlflow": 0, "//tools:tensorboard": 0}
    assert nothing_listens_on(int(mlflow_url.group(2))) and nothing_listens_on(int(board.group(2)))
