"""The Ray Jobs API side: check the address answers, submit, stream the logs, exit with the job's outcome.

The address check is one bounded HTTP request to the dashboard (`/api/version`) before anything is
submitted. Following streams the job's log (JobSubmissionClient.tail_job_logs) and then reads its final
status; Ctrl-C while following asks whether to stop the job on the cluster, and `--detach` returns right
after the submit, printing how to follow and stop it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request

from tools.launch.spec import LaunchError

__all__ = ["normalize_address", "check_address", "submit", "follow", "CHECK_TIMEOUT_S"]

CHECK_TIMEOUT_S = 10
_FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def normalize_address(address: str) -> str:
    """http(s)://HOST:PORT of the dashboard; HOST:PORT gets http://; ray:// (Ray Client) is refused."""
    if address.startswith("ray://"):
        raise LaunchError(f"--address {address}: that is the Ray Client port; the launcher submits through the "
                          "Jobs API on the dashboard: pass http://HOST:8265")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise LaunchError(f"--address {address}: expected http://HOST:PORT (the dashboard, usually port 8265)")
    return address.rstrip("/")


def check_address(address: str, timeout_s: float = CHECK_TIMEOUT_S) -> dict:
    """The dashboard's version answer; a LaunchError naming the fix when it does not answer in time."""
    url = f"{address}/api/version"
    token = _token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:  # noqa: S310
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise LaunchError(f"the Ray cluster at {address} wants an authentication token ({exc.code}); set "
                              "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token") from None
        raise LaunchError(f"{url} answered {exc.code}; check --address (the head's dashboard, port 8265)") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LaunchError(f"the Ray cluster at {address} did not answer within {timeout_s:.0f} s ({reason}); "
                          "check --address (the head's dashboard, http://HOST:8265; `ray status` on the head), "
                          "or use --address local for a throwaway cluster on this machine") from None
    try:
        return json.loads(body)
    except ValueError:
        raise LaunchError(f"{url} answered, but not as a Ray dashboard does; check --address") from None


def _token() -> str | None:
    """The Ray token as Ray's own clients find it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def submit(address: str, job) -> tuple[object, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env, metadata=job.metadata)
    print(f"launch: submitted Ray job {job_id} to {address}", file=sys.stderr, flush=True)
    return client, job_id


def _how_to(address: str, job_id: str) -> str:
    return (f"follow: ray job logs --address {address} --follow {job_id}\n"
            f"        stop: ray job stop --address {address} {job_id}")


async def _stream(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _final_status(client, job_id: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if str(info.status) in _FINAL or time.monotonic() > deadline:
            return info
        time.sleep(1)


def _exit_code(info) -> int:
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 143
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and 0 < code < 256 else 1


def follow(client, address: str, job_id: str, *, detach: bool, ask=input) -> int:
    """Streams the log to the end; returns 0 on SUCCEEDED, the driver's exit code on FAILED, 143 if STOPPED."""
    if detach:
        print(f"launch: detached from Ray job {job_id}\n  {_how_to(address, job_id)}", file=sys.stderr)
        return 0
    try:
        asyncio.run(_stream(client, job_id))
    except KeyboardInterrupt:
        try:
            answer = ask(f"\nlaunch: stop the Ray job {job_id} on the cluster? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer == "y":
            client.stop_job(job_id)
            info = _final_status(client, job_id, timeout_s=60)
            print(f"launch: Ray job {job_id} is {info.status}", file=sys.stderr)
        else:
            print(f"launch: the job keeps running.\n  {_how_to(address, job_id)}", file=sys.stderr)
        return 130
    info = _final_status(client, job_id)
    code = _exit_code(info)
    print(f"launch: Ray job {job_id} {info.status}" + (f" ({info.message})" if code and info.message else ""),
          file=sys.stderr)
    return code
