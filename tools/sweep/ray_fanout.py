"""`sweep --on ray`: the sweep's workers as N Ray Jobs-API jobs sharing one study storage.

The sweep prepares the study in its own process (as `--parallel` does), then submits N jobs whose entrypoint
is `sweep --worker` with the same space, storage and study, streams their logs (each line prefixed with its
worker), and runs the report step when all have ended. Each job asks Ray for 1 CPU (entrypoint_num_cpus),
so Ray places the workers where CPUs are free, i.e. across nodes; a worker's trainer runs on its node.

It reuses the launcher (tools/launch/ray): `--address local` is the launcher's throwaway LocalCluster,
started inside a private network namespace (cluster.isolate) because Ray listens on every interface; a
remote address goes through submit.normalize_address/check_address before anything starts, and job
outcomes are read as submit does. The workers run the sweep's own interpreter and runfiles (as the
launcher's `runfiles` code mode): on `--address local` those are this machine's; a remote cluster's nodes
must see the same paths (a shared filesystem) and a server storage and MLflow that every node reaches.

Ctrl-C or SIGTERM stops every job on the cluster (JobSubmissionClient.stop_job: the worker gets SIGTERM, its
trainer dies with it) and exits 130; the trials they were running go stale and are re-queued by the next
run of the same command, which resumes the study.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tools.sweep import worker as worker_mod

__all__ = ["FanoutError", "check_reachable", "check_request", "isolate", "local_storage", "run"]

# A worker is one Python process driving one trainer at a time: one CPU of the cluster.
CPUS_PER_WORKER = 1
_STOP_WAIT_S = 60


class FanoutError(RuntimeError):
    """A wrong `--on ray` request; the sweep prints it and exits 2."""


def local_storage(url: str) -> bool:
    """sqlite (a file on this machine) cannot be shared by workers on other machines."""
    return url.startswith("sqlite")


def _loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def check_request(address: str | None, storage: str | None, tracking_uri: str | None) -> str:
    """Refusals before anything starts; returns the normalized address (or `local`)."""
    from tools.launch.ray import submit
    from tools.launch.spec import LaunchError

    if not address:
        raise FanoutError("--on ray needs --address: a running cluster's dashboard (http://HOST:8265) or `local` "
                          "(a throwaway cluster on this machine)")
    if address == "local":
        return address
    try:
        address = submit.normalize_address(address)
    except LaunchError as exc:
        raise FanoutError(str(exc)) from None
    if _loopback(address):
        return address
    if not storage or local_storage(storage):
        raise FanoutError(f"--address {address} is a remote cluster: its workers cannot share a sqlite file. Pass "
                          "--storage postgresql+psycopg://USER@HOST:5432/DB (a server every node reaches; "
                          "docs/sweeps.md)")
    if not tracking_uri or tracking_uri.startswith(("sqlite", "file:", "/")):
        raise FanoutError(f"--address {address} is a remote cluster: its trials cannot log to this machine's "
                          f"MLflow store ({tracking_uri or 'the default under .mlenv/'}). Set MLFLOW_TRACKING_URI to "
                          "an MLflow server every node reaches (http://HOST:5000)")
    return address


def check_reachable(address: str) -> None:
    """The launcher's bounded dashboard check, before the study is prepared (`local` needs none)."""
    from tools.launch.ray import submit
    from tools.launch.spec import LaunchError

    if address == "local":
        return
    try:
        submit.check_address(address)
    except LaunchError as exc:
        raise FanoutError(str(exc)) from None


def isolate() -> None:
    """`--address local`: the launcher's private network namespace (re-exec under `unshare -n` when root)."""
    from tools.launch.ray import cluster

    cluster.isolate()


def _entrypoint(worker_argv: list[str]) -> str:
    """The worker command line for a job, with this interpreter (runfiles code mode)."""
    python = [sys.executable, *(["-S"] if sys.flags.no_site else [])]
    return shlex.join([*python, os.path.abspath(worker_argv[0]), *worker_argv[1:]])


def _env() -> dict[str, str]:
    """What a worker needs to find the code and the same stores as this process."""
    from tools.launch.ray.job import Code

    env = {"PYTHONPATH": Code.from_runfiles(sys.argv[0]).pythonpath, "PYTHONUNBUFFERED": "1"}
    for name in ("MLFLOW_TRACKING_URI", "BUILD_WORKSPACE_DIRECTORY", "TEST_TMPDIR", "MLFLOW_DISABLE_TELEMETRY"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


async def _tail(client: Any, job_id: str, prefix: str) -> None:
    pending = ""
    async for chunk in client.tail_job_logs(job_id):
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            sys.stdout.write(f"{prefix}{line}\n")
        sys.stdout.flush()
    if pending:
        sys.stdout.write(f"{prefix}{pending}\n")


async def _tail_all(client: Any, jobs: list[str]) -> None:
    await asyncio.gather(*(_tail(client, job_id, f"[worker {i}] ") for i, job_id in enumerate(jobs)))


def _stop_all(client: Any, jobs: list[str]) -> list[Any]:
    from tools.launch.ray import submit

    for job_id in jobs:
        try:
            client.stop_job(job_id)
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            print(f"sweep: could not stop Ray job {job_id}: {exc}", file=sys.stderr)
    infos = []
    for job_id in jobs:
        info = submit._final_status(client, job_id, timeout_s=_STOP_WAIT_S)  # noqa: SLF001 - the launcher's reader
        print(f"sweep: Ray job {job_id} is {info.status}", file=sys.stderr, flush=True)
        infos.append(info)
    return infos


def _record(sweep_dir: Path, jobs: list[str], infos: list[Any]) -> None:
    """Appends one line per job to <out>/ray_jobs.jsonl: which node ran which worker (trials name their job)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / "ray_jobs.jsonl", "a") as f:
        for i, (job_id, info) in enumerate(zip(jobs, infos, strict=True)):
            f.write(json.dumps({"worker": i, "job_id": job_id, "status": str(info.status),
                                "driver_node_id": getattr(info, "driver_node_id", None)}) + "\n")


def _submit_and_follow(address: str, worker_argvs: list[list[str]], sweep_dir: Path, study: str) -> list[int]:
    """Submits one job per worker, streams their logs, returns each job's exit code (submit's convention)."""
    from ray.job_submission import JobSubmissionClient

    from tools.launch.ray import submit

    client = JobSubmissionClient(address)
    jobs: list[str] = []
    try:
        stamp = f"{int(time.time())}-{os.getpid()}"
        for index, argv in enumerate(worker_argvs):
            submission_id = f"sweep-{study}-w{index}-{stamp}"
            env = {**_env(), worker_mod.JOB_ENV: submission_id}
            job_id = client.submit_job(entrypoint=_entrypoint(argv), runtime_env={"env_vars": env},
                                       entrypoint_num_cpus=CPUS_PER_WORKER, submission_id=submission_id,
                                       metadata={"mlenv.sweep.study": study, "mlenv.sweep.worker": str(index)})
            jobs.append(job_id)
            print(f"sweep: worker {index} is Ray job {job_id} on {address}", file=sys.stderr, flush=True)
        asyncio.run(_tail_all(client, jobs))
        infos = [submit._final_status(client, job_id) for job_id in jobs]  # noqa: SLF001 - the launcher's reader
    except KeyboardInterrupt:
        print(f"\nsweep: stopping {len(jobs)} worker job(s) on the cluster; rerun the same command to resume the "
              "study", file=sys.stderr, flush=True)
        _record(sweep_dir, jobs, _stop_all(client, jobs))
        raise
    _record(sweep_dir, jobs, infos)
    return [submit._exit_code(info) for info in infos]  # noqa: SLF001


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(address: str, worker_argvs: list[list[str]], sweep_dir: Path, study: str) -> None:
    """Runs the workers on `address` (`local`: a throwaway cluster of one 1-CPU node per worker)."""
    from tools.launch.ray import cluster
    from tools.launch.spec import LaunchError

    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if address == "local":
            # Torn down by the context manager, also on Ctrl-C/SIGTERM (after the jobs were stopped).
            with cluster.LocalCluster(nodes=len(worker_argvs), cpus_per_node=CPUS_PER_WORKER) as c:
                codes = _submit_and_follow(c.address, worker_argvs, sweep_dir, study)
        else:
            codes = _submit_and_follow(address, worker_argvs, sweep_dir, study)
    except LaunchError as exc:
        raise FanoutError(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(codes):
        raise FanoutError(f"sweep workers on Ray ended with exit codes {codes}; see their logs above (and "
                          f"{sweep_dir}/trials/*/trainer.log); rerun the same command to resume the study")
