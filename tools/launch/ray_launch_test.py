"""--on ray before anything is submitted: the dry-run job spec, the refusals, the address check, Ctrl-C.

No Ray cluster is started here (homefeed_ray_test does that); the address check talks to real loopback
sockets: a port nobody listens on, a listener that accepts and never answers (the bounded timeout), and an
HTTP server that answers 401 as a token-protected Ray dashboard does.
"""

from __future__ import annotations

import http.server
import io
import json
import socket
import threading
import time
from contextlib import redirect_stderr, redirect_stdout

import pytest

from tools.launch import cli
from tools.launch.ray import submit

MAIN = "ml/homefeed/train.py"


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["--project", "homefeed", "--trainer", "ml/homefeed/train", "--trainer-main", MAIN, *args])
    return code, out.getvalue(), err.getvalue()


def test_dry_run_prints_the_job_spec_and_submits_nothing():
    code, out, err = run_cli("--on", "ray", "--address", "local", "--nodes", "2", "--nproc-per-node", "2",
                             "--dry-run", "--", "--epochs", "1")
    assert code == 0, err
    job = json.loads(out)
    assert job["address"] == "local" and job["local_cluster_nodes"] == 2
    assert job["scaling"] == {"backend": "gloo", "num_workers": 4, "placement_strategy": "SPREAD",
                              "resources_per_worker": {"CPU": 0.5}, "use_gpu": False}
    assert " -m tools.launch.ray.driver --main " in job["entrypoint"] and job["entrypoint"].count(MAIN) == 1
    assert "--workers 4 --cpus-per-worker 0.5" in job["entrypoint"]
    assert job["entrypoint"].split(" -- ", 1)[1].startswith("--epochs 1 --set run_name=homefeed-")
    assert job["runtime_env"]["env_vars"]["PYTHONPATH"]
    assert job["metadata"] == {"mlenv.code": "runfiles", "mlenv.project": "homefeed"}
    # --cpus-per-node splits over the node's workers; a loopback address also runs this machine's runfiles.
    code, out, _ = run_cli("--on", "ray", "--address", "127.0.0.1:8265", "--cpus-per-node", "3",
                           "--nproc-per-node", "2", "--env", "A=1", "--tracking-uri", "http://mlflow:5000",
                           "--dry-run")
    job = json.loads(out)
    assert code == 0 and job["address"] == "http://127.0.0.1:8265"
    assert job["scaling"]["resources_per_worker"] == {"CPU": 1.5} and job["scaling"]["placement_strategy"] == "PACK"
    assert job["runtime_env"]["env_vars"]["A"] == "1"
    assert job["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_the_ray_data_seam_reaches_the_driver():
    code, out, _ = run_cli("--on", "ray", "--address", "local", "--ray-datasets", "ml.data.ray_data:datasets",
                           "--dry-run")
    assert code == 0 and "--datasets ml.data.ray_data:datasets --" in json.loads(out)["entrypoint"]


def _silent_listener() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--on", "ray"], "--on ray needs --address"),
    (["--on", "ray", "--address", "local", "--gpus-per-node", "1"], "this build uses the cpu lock"),
    (["--on", "ray", "--address", "local", "--max-processes", "2", "--nodes", "2", "--nproc-per-node", "2"],
     "supports at most 2"),
    (["--on", "ray", "--address", "local", "--nodes", "1000"], "use --nodes <="),
    (["--on", "ray", "--address", "ray://10.0.0.1:10001"], "that is the Ray Client port"),
    (["--on", "ray", "--address", "local", "--detach"], "the throwaway cluster ends with the launcher"),
    (["--on", "ray", "--address", "local", "--secret-env", "T=s:k"], "--secret-env is for --on k8s"),
    (["--on", "ray", "--address", "local", "--ray-datasets", "nocolon"], "expects MODULE:FUNCTION"),
    (["--on", "ray", "--address", "http://10.1.2.3:8265"], "must run this project's train image"),
    (["--on", "ray", "--address", "local", "--flavor", "rayjob"], "--flavor rayjob only applies to --on k8s"),
    (["--on", "ray", "--address", "local", "--", "--nproc", "2"], "use --nproc-per-node"),
])
def test_bad_input_is_refused_before_anything_starts(args, message):
    started = time.monotonic()
    code, out, err = run_cli(*args)
    assert code == 2 and message in err and out == "", err
    assert time.monotonic() - started < 5, "a refusal must not wait on the network or start a cluster"


def test_an_address_nobody_listens_on_is_refused():
    code, out, err = run_cli("--on", "ray", "--address", f"http://127.0.0.1:{_free_port()}")
    assert code == 2 and "did not answer" in err and "--address local" in err and out == ""


def test_an_address_that_never_answers_is_refused_within_the_timeout(monkeypatch):
    monkeypatch.setattr(submit, "CHECK_TIMEOUT_S", 1)
    monkeypatch.setattr(submit.check_address, "__defaults__", (1,))
    sock, port = _silent_listener()
    try:
        started = time.monotonic()
        code, _, err = run_cli("--on", "ray", "--address", f"127.0.0.1:{port}")
        assert code == 2 and "did not answer within 1 s" in err
        assert time.monotonic() - started < 10
    finally:
        sock.close()


def test_a_token_protected_dashboard_names_the_token_fix(monkeypatch):
    class Unauthorized(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(401)
            self.end_headers()

        def log_message(self, *_args):
            pass

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, _, err = run_cli("--on", "ray", "--address", f"127.0.0.1:{server.server_port}")
        assert code == 2 and "wants an authentication token" in err and "RAY_AUTH_TOKEN" in err
    finally:
        server.shutdown()


class _InterruptedJobs:
    """The JobSubmissionClient calls follow() makes, with a log stream the user interrupts (Ctrl-C)."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    async def tail_job_logs(self, job_id):
        yield "step 1/8\n"
        raise KeyboardInterrupt

    def stop_job(self, job_id):
        self.stopped.append(job_id)

    def get_job_info(self, job_id):
        return type("Info", (), {"status": "STOPPED" if self.stopped else "RUNNING", "message": ""})()


@pytest.mark.parametrize(("answer", "stopped"), [("y", ["j1"]), ("n", [])])
def test_ctrl_c_while_following_asks_whether_to_stop_the_job(answer, stopped, capsys):
    jobs = _InterruptedJobs()
    code = submit.follow(jobs, "http://127.0.0.1:8265", "j1", detach=False, ask=lambda _prompt: answer)
    assert code == 130 and jobs.stopped == stopped
    err = capsys.readouterr().err
    assert ("is STOPPED" in err) if stopped else ("ray job stop --address http://127.0.0.1:8265 j1" in err)


def test_detach_returns_at_once_with_the_commands_to_follow_and_stop(capsys):
    assert submit.follow(None, "http://h:8265", "j2", detach=True) == 0
    err = capsys.readouterr().err
    assert "ray job logs --address http://h:8265 --follow j2" in err and "ray job stop" in err


def test_a_projects_ray_data_hook_applies_to_ray_runs_only(tmp_path):
    # homefeed's launch.json names its Ray Data hook: --on ray passes it to the driver, --on local ignores it,
    # while the same setting given as a flag to --on local is still refused.
    defaults = tmp_path / "launch.json"
    defaults.write_text(json.dumps({"ray_datasets": "ml.homefeed.train:ray_datasets"}))
    base = ["--project", "homefeed", "--trainer", "ml/homefeed/train", "--defaults", str(defaults)]
    spec, _ = cli.parse([*base, "--on", "ray", "--address", "local"])
    assert spec.ray_datasets == "ml.homefeed.train:ray_datasets"
    spec, _ = cli.parse([*base, "--on", "local"])
    assert spec.ray_datasets is None
    code, _, err = run_cli("--on", "local", "--ray-datasets", "ml.homefeed.train:ray_datasets", "--dry-run")
    assert code == 2 and "--ray-datasets" in err and "--on ray" in err
