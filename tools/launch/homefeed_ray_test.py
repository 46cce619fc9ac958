"""homefeed's real trainer as 2 Ray Train workers (DDP on gloo) on 2-node local Ray clusters, via the Jobs API.

The whole test runs in a private network namespace (it re-executes itself under `unshare -n` with only
loopback up): Ray listens on every interface. Checked:
- a running cluster (head + worker node, started here with the launcher's own LocalCluster) trains the tiny
  config to the end through `--address http://127.0.0.1:PORT`; the MLflow run has params, metrics and
  artifacts; the two workers were spread over both nodes;
- a second launch is stopped mid-run through the Jobs API (JobSubmissionClient.stop_job): the launcher exits
  143 and the run has a checkpoint short of the end;
- the relaunch with `--resume` under `--address local` (a throwaway cluster the launcher starts and tears
  down: no process of it is left) continues from that checkpoint to the same final parameters, bit for bit,
  as the uninterrupted run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if os.environ.get("MLENV_RAY_TEST_NETNS") != "1":
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: install util-linux and iproute2 to run Ray in a private network "
                             "namespace")
    os.environ["MLENV_RAY_TEST_NETNS"] = "1"
    os.execvp("unshare", ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                          sys.executable, *sys.orig_argv[1:]])

import mlflow  # noqa: E402
import torch  # noqa: E402

from ml.engine.checkpoint import Checkpoint, CheckpointStore  # noqa: E402
from ml.engine.torch.state import load_model_state  # noqa: E402
from tools.launch.ray import cluster  # noqa: E402

LAUNCH = "tools/launch/homefeed_launch"
SAMPLES, BATCH, WORKERS = 16384, 128, 2
STEPS = SAMPLES // (BATCH * WORKERS)
TINY = ["--batch-size", str(BATCH), "--log-every", "8", "--epochs", "1", "--no-export", "--checkpoint-every", "4",
        "--set", f"train_samples={SAMPLES}", "--set", "eval_samples=512", "--set", "num_shards=2",
        "--set", "num_users=400", "--set", "num_items=300", "--set", "seq_len=8",
        "--set", "embed_dim=16", "--set", "seq_heads=2", "--set", "seq_layers=1", "--set", "mlp_dims=32,16",
        "--set", "dropout=0"]


def launch(address: str, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([LAUNCH, "--on", "ray", "--address", address, "--nodes", "2", "--nproc-per-node", "1",
                             "--", *TINY, "--run-name", run_dir.name, "--set", f"run_dir={run_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run_dir.parent / 'mlflow.db'}"})


def latest(run_dir: Path) -> Checkpoint | None:
    return CheckpointStore(run_dir / "checkpoints", keep=1).latest(check_config=False)


def leftover_processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and proc.name.isdigit() and int(proc.name) != os.getpid():
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_homefeed_on_ray_trains_stops_and_resumes_to_the_same_state(tmp_path):
    assert cluster.in_private_network()
    # As on a real cluster, the artifacts go to storage every node sees (here: a folder of this test).
    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment(
        "homefeed", artifact_location=str(tmp_path / "artifacts"))
    with cluster.LocalCluster(nodes=2, cpus_per_node=1) as running:
        # Imported once the cluster set RAY_AUTH_MODE/RAY_AUTH_TOKEN: Ray reads them when its modules load.
        from ray.job_submission import JobSubmissionClient
        from ray.util.state import list_actors

        whole = launch(running.address, tmp_path / "whole")
        log = whole.communicate(timeout=600)[0]
        assert whole.returncode == 0, log[-4000:]
        assert "SUCCEEDED" in log and f"done at step {STEPS}" in log, log[-4000:]
        # Once: each node of a cluster on one machine watches its own log folder, not one shared by all.
        assert log.count(f"done at step {STEPS}:") == 1, log[-4000:]
        # SPREAD: one worker per node, so the process group really crossed two Ray nodes. Asked of Ray's state
        # API, not read from the log: Ray deduplicates workers' log lines that differ only in numbers, so a
        # rank that prints only what rank 0 printed may never show its pid (CI failure, stop 25).
        workers = list_actors(address=running.address, filters=[("class_name", "=", "RayTrainWorker")])
        assert len(workers) == WORKERS, workers
        assert len({w.node_id for w in workers}) == 2, [(w.pid, w.node_id) for w in workers]

        cut = tmp_path / "cut"
        first = launch(running.address, cut)
        job_id = None
        deadline = time.monotonic() + 600
        while latest(cut) is None:
            assert first.poll() is None, first.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        job_id = next(j.submission_id for j in JobSubmissionClient(running.address).list_jobs()
                      if j.status == "RUNNING")
        JobSubmissionClient(running.address).stop_job(job_id)
        log = first.communicate(timeout=180)[0]
        assert first.returncode == 143 and "STOPPED" in log, log[-4000:]
        stopped_at = latest(cut).step
        assert 0 < stopped_at < STEPS, "the run finished before the stop; nothing was resumed"

    again = launch("local", cut, "--resume")
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log[-4000:]
    assert f"done at step {STEPS}" in log and "local Ray cluster stopped" in log, log[-4000:]
    temp_dir = re.search(r"local Ray cluster \(.*\) in (\S+)", log).group(1)
    assert not leftover_processes(temp_dir) and not Path(temp_dir).exists()

    a, b = load_model_state(latest(tmp_path / "whole").path), load_model_state(latest(cut).path)
    assert latest(cut).step == STEPS and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("homefeed").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["cut", "whole"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params and "train/loss" in r.data.metrics, r.data.metrics
        assert r.data.params.get("batch_size") == str(BATCH)
        assert [a.path for a in client.list_artifacts(r.info.run_id)], "no artifacts logged"
        assert r.data.tags.get("mlenv.world_size") == str(WORKERS)
