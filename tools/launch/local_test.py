"""--on local and the engine's --nproc: real ranks under torchrun's agent, stopped by signals, bad input.

Each process test starts 2 real gloo ranks (testdata/ddp_worker.py) through a real `:launch` binary or
`ml.engine.distributed.launch`, then checks what a scheduler or Bazel's timeout relies on: a SIGTERM to the
launcher reaches every rank, a rank that ignores it is killed after the grace period, one failed rank stops
the others, and no rank outlives the launcher.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tools.launch import cli

LAUNCH = Path("tools/launch/ddp_worker_launch")
WORKER = Path("tools/launch/testdata/ddp_worker.py")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its parent's bookkeeping is left


def wait_for_ranks(out: Path, proc: subprocess.Popen, n: int = 2, timeout_s: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        files = [out / f"pid-{r}" for r in range(n)]
        if all(f.exists() and f.read_text().strip() for f in files):
            pids = [int(f.read_text().split()[0]) for f in files]
            # every rank all-reduced a 1 with the others: the group really formed
            assert all(f.read_text().split()[1] == str(n) for f in files)
            return pids
        assert proc.poll() is None, f"the launcher exited with {proc.returncode} before the ranks started"
        assert time.monotonic() < deadline, "the ranks did not start in time"
        time.sleep(0.2)


def start(cmd: list[str], out: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def launcher_cmd(out: Path) -> list[str]:
    return [str(LAUNCH), "--on", "local", "--nproc-per-node", "2", "--", str(out)]


def engine_cmd(out: Path) -> list[str]:
    code = ("import sys; from ml.engine import distributed; "
            f"sys.exit(distributed.launch(2, [{str(WORKER.absolute())!r}, {str(out)!r}]))")
    return [sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code]


@pytest.mark.parametrize("make_cmd", [launcher_cmd, engine_cmd], ids=["launch", "engine"])
def test_sigterm_to_the_launcher_stops_every_rank(tmp_path, make_cmd):
    proc = start(make_cmd(tmp_path), tmp_path)
    pids = wait_for_ranks(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log
    assert sorted(p.name for p in tmp_path.glob("stopped-*")) == ["stopped-0", "stopped-1"], log
    assert not [p for p in pids if alive(p)]


def test_a_rank_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    proc = start(launcher_cmd(tmp_path), tmp_path, DDP_WORKER_IGNORE_SIGTERM="1", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="3")
    pids = wait_for_ranks(tmp_path, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log
    assert time.monotonic() - sent >= 2.5, "the ranks were killed before their grace period"
    assert not list(tmp_path.glob("stopped-*"))
    assert not [p for p in pids if alive(p)]


@pytest.mark.parametrize("make_cmd", [launcher_cmd, engine_cmd], ids=["launch", "engine"])
def test_a_failed_rank_stops_the_others_and_sets_the_exit_code(tmp_path, make_cmd):
    proc = start(make_cmd(tmp_path), tmp_path, DDP_WORKER_FAIL_RANK="1")
    log = proc.communicate(timeout=180)[0]
    assert proc.returncode == 7, log
    assert "rank 1 exited with code 7" in log
    pid0 = int((tmp_path / "pid-0").read_text().split()[0])
    assert not alive(pid0)


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["--project", "homefeed", "--trainer", "ml/homefeed/train", *args])
    return code, out.getvalue(), err.getvalue()


def test_dry_run_prints_the_torchrun_command_and_pins_one_run_name():
    code, out, _ = run_cli("--on", "local", "--nproc-per-node", "2", "--dry-run", "--", "--epochs", "1")
    assert code == 0
    assert out.startswith("torchrun --standalone --nnodes=1 --nproc-per-node=2 --max-restarts=0 --no-python ")
    assert "--epochs 1 --set run_name=homefeed-" in out
    code, out, _ = run_cli("--on", "local", "--dry-run", "--", "--run-name", "mine", "--resume")
    assert code == 0 and "run_name=" not in out and out.rstrip().endswith("--run-name mine --resume")


@pytest.mark.parametrize(("args", "message"), [
    (["--on", "laptop"], "unknown --on 'laptop': choose one of local, ray, k8s"),
    (["--on", "local", "--gpus-per-node", "1"], "this build uses the cpu lock"),
    (["--on", "local", "--nproc-per-node", str((os.cpu_count() or 1) + 1)], "would oversubscribe it"),
    (["--on", "local", "--nproc-per-node", "0"], "--nproc-per-node must be >= 1"),
    (["--on", "local", "--nodes", "2"], "--nodes must be 1"),
    (["--on", "local", "--max-processes", "1", "--nproc-per-node", "2"], "supports at most 1"),
    (["--on", "local", "--flavor", "trainjob"], "--flavor trainjob only applies to --on k8s"),
    (["--on", "local", "--", "--nproc", "4"], "use --nproc-per-node"),
    (["--on", "k8s", "--flavor", "job"], "needs --repository"),
    (["--on", "k8s", "--repository", "r.example/x", "--dry-run"], "has no train image"),
    (["--on", "ray"], "--on ray needs --address"),
    (["--on", "local", "--defaults", "/nonexistent/launch.json"], "cannot read the launch defaults file"),
])
def test_bad_input_is_refused_with_the_fix(args, message):
    code, out, err = run_cli(*args, "--dry-run") if "--dry-run" not in args else run_cli(*args)
    assert code == 2 and message in err and out == "", err


def test_defaults_file_sets_flags_and_flags_win(tmp_path):
    defaults = tmp_path / "launch.json"
    defaults.write_text('{"nproc_per_node": 2, "env": {"A": "1"}}')
    code, out, _ = run_cli("--on", "local", "--defaults", str(defaults), "--dry-run")
    assert code == 0 and "--nproc-per-node=2" in out
    code, out, _ = run_cli("--on", "local", "--defaults", str(defaults), "--nproc-per-node", "1", "--dry-run")
    assert code == 0 and "--nproc-per-node=1" in out
    defaults.write_text('{"nprocs": 2}')
    code, _, err = run_cli("--on", "local", "--defaults", str(defaults), "--dry-run")
    assert code == 2 and "unknown keys nprocs" in err
