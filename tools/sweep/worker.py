"""One sweep worker: takes trials from the shared Optuna study and runs each as an ordinary trainer run.

Why a subprocess per trial and not an in-process objective: a trial then is exactly what `train` does (same
flags, checkpoints, MLflow run, exports), the engine needs no sweep hooks, and a pruned or hung trial is
stopped with a signal instead of being trusted to return. The worker follows the run's `tracking.jsonl`
(written line by line by ml.engine.tracking) for the intermediate `metric` values, reports them to Optuna
and SIGTERMs the trainer when the pruner says so.

Any number of workers (local processes, Ray tasks, Kubernetes pods) may run `sweep --worker` against one
RDB storage. Guarantees, all enforced through the storage:
  - exactly `trials` trials end COMPLETE or PRUNED (a trial started past that count is dropped as surplus);
  - no two live or finished trials share a parameter set (the later one is dropped as a duplicate);
  - a worker killed mid-trial stops heartbeating; after the grace period its trial is marked FAIL and
    re-queued with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback), never counted twice.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.sweep.space import Space, as_set_value

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no MLflow usage telemetry from sweeps (as the engine)

__all__ = ["WorkerSettings", "run_worker", "read_metrics", "LIVE_STATES"]

# Set by a cluster backend (--on ray: the job's submission id) so each trial records which job ran it.
JOB_ENV = "MLENV_SWEEP_JOB"

# How old a RUNNING trial without parameters must be before it counts as its dead worker's orphan.
ORPHAN_GRACE_S = 30.0

# Why a trial ended FAIL; only "trainer" and "invalid" count toward --max-failures.
REASON = "sweep_fail_reason"


def _live_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


LIVE_STATES = _live_states


@dataclass
class WorkerSettings:
    trainer: str  # absolute path of the trainer binary
    trials: int
    sweep_dir: Path
    base_sets: list[str]  # key=value for every trial
    parent_run_id: str | None
    tracking_uri: str
    worker_index: int = 0
    max_failures: int = 0  # 0: as many as trials
    trial_timeout_s: float = 3600.0
    poll_s: float = 0.5
    trainer_command: list[str] | None = None  # instead of `trainer`: e.g. a train image's Entrypoint


def read_metrics(log_path: Path, offset: int) -> tuple[list[dict], int, str | None]:
    """New complete records of a tracking.jsonl from `offset`: (records, new offset, run id if seen)."""
    records, run_id = [], None
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset, None
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset, None
    for line in chunk[:end].splitlines():
        entry = json.loads(line)
        if entry.get("kind") == "run_id" and entry.get("run_id"):
            run_id = entry["run_id"]
        records.append(entry)
    return records, offset + end + 1, run_id


def _die_with_parent() -> None:
    """Runs in the trainer child: SIGKILL it if the worker dies, so a killed sweep leaves no orphan runs."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Heartbeat:
    """Keeps a trial alive in the storage while its trainer runs (what study.optimize does internally)."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, interval), daemon=True)
        self._thread.start()

    def _beat(self, storage: Any, trial_id: int, interval: float) -> None:
        while not self._stop.is_set():
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - a transient storage error must not kill the trial
                print(f"sweep: heartbeat of trial {trial_id} failed: {exc}", file=sys.stderr)
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class Worker:
    def __init__(self, study: Any, space: Space, settings: WorkerSettings) -> None:
        self.study, self.space, self.s = study, space, settings
        self.client = None
        if settings.parent_run_id:
            import mlflow

            self.client = mlflow.MlflowClient(settings.tracking_uri)

    # -- study bookkeeping ---------------------------------------------------------------------------------
    def _counts(self) -> tuple[int, int, int]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        in_flight = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        failures = sum(t.state == TrialState.FAIL and t.user_attrs.get(REASON) in ("trainer", "invalid")
                       for t in trials)
        return done, in_flight, failures

    def _drop(self, trial: Any, reason: str, message: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr(REASON, reason)
        trial.set_user_attr("sweep_message", message)
        self.study.tell(trial, state=TrialState.FAIL)

    def _conflict(self, trial: Any) -> str | None:
        """'surplus' if `trials` earlier live trials exist, 'duplicate' if another live trial has these params."""
        from optuna.trial import TrialState

        live = [t for t in self.study.get_trials(deepcopy=False) if t.state in LIVE_STATES() and t.number != trial.number]
        if sum(t.number < trial.number for t in live) >= self.s.trials:
            return "surplus"
        mine = _params_key(trial.params)
        for t in live:
            if t.state != TrialState.WAITING and _params_key(t.params) == mine:
                return f"duplicate of trial {t.number}"
        return None

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Runs trials until the study holds `trials` finished ones; returns how many this worker ran."""
        import optuna

        ran, duplicates_in_a_row = 0, 0
        max_failures = self.s.max_failures or self.s.trials
        storage = self.study._storage
        interval = storage.get_heartbeat_interval() or 5
        while True:
            optuna.storages.fail_stale_trials(self.study)
            self._fail_orphans(max(3 * interval, ORPHAN_GRACE_S))
            done, in_flight, failures = self._counts()
            if done >= self.s.trials:
                return ran
            if failures >= max_failures:
                raise RuntimeError(f"{failures} trials failed (limit --max-failures {max_failures}); see the "
                                   f"trial logs under {self.s.sweep_dir}/trials and fix the trainer or the space")
            if done + in_flight >= self.s.trials and not self._waiting():
                time.sleep(min(interval, 2.0))  # the rest is in flight elsewhere; wait for it to end or go stale
                continue
            trial = self.study.ask()
            for p in self.space.params:
                p.suggest(trial)
            conflict = self._conflict(trial)
            if conflict == "surplus":
                self._drop(trial, "surplus", "started after the study had enough trials")
                continue
            if conflict:
                self._drop(trial, "duplicate", conflict)
                duplicates_in_a_row += 1
                if duplicates_in_a_row > 50:
                    raise RuntimeError("the sampler proposed 50 parameter sets in a row that were already tried: "
                                       "the space has fewer distinct points than --trials; widen it or ask for "
                                       "fewer trials")
                continue
            duplicates_in_a_row = 0
            beat = _Heartbeat(storage, trial._trial_id, interval)
            try:
                self._run_trial(trial)
            finally:
                beat.stop()
            ran += 1

    def _fail_orphans(self, grace_s: float) -> None:
        """Fails RUNNING trials that never got parameters: their worker died between ask() and suggest (e.g. a
        stopped Ray job), before any heartbeat, so Optuna never finds them stale and the study would wait on
        them forever. A live worker suggests within milliseconds of ask(); `grace_s` is far longer."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        now = datetime.datetime.now()  # Optuna stamps datetime_start with the local naive time
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.params or "run_dir" in t.user_attrs or t.datetime_start is None:
                continue
            if (now - t.datetime_start).total_seconds() < grace_s:
                continue
            try:
                self.study._storage.set_trial_user_attr(t._trial_id, REASON, "orphaned")
                self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another worker failed it first
            print(f"sweep[{self.s.worker_index}]: trial {t.number} was started but never given parameters by a "
                  "worker that died; marked failed", file=sys.stderr, flush=True)

    def _waiting(self) -> bool:
        from optuna.trial import TrialState

        return any(t.state == TrialState.WAITING for t in self.study.get_trials(deepcopy=False))

    def _run_trial(self, trial: Any) -> None:
        from optuna.trial import TrialState

        run_dir = self.s.sweep_dir / "trials" / f"{trial.number:04d}"
        run_name = f"{self.s.sweep_dir.name}-trial-{trial.number:04d}"
        sets = list(self.s.base_sets) + [f"{k}={as_set_value(v)}" for k, v in sorted(trial.params.items())]
        # The retry of a killed trial inherits its user attrs: overwrite every per-run one.
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_id", None)
        trial.set_user_attr("set", sets)
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        trial.set_user_attr("worker_job", os.environ.get(JOB_ENV))  # the Ray job (--on ray) or pod that ran it
        cmd = [*(self.s.trainer_command or [self.s.trainer]), *[x for s in sets for x in ("--set", s)], "--set", f"run_dir={run_dir}",
               "--set", f"run_name={run_name}", "--set", f"experiment={self.study.study_name}"]
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "tracking.jsonl"
        if log_path.exists():
            log_path.unlink()  # a stale log from an earlier attempt in the same folder must not be read
        print(f"sweep[{self.s.worker_index}]: trial {trial.number}: "
              + " ".join(f"{k}={as_set_value(v)}" for k, v in sorted(trial.params.items())), file=sys.stderr,
              flush=True)
        with open(run_dir / "trainer.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                    start_new_session=True)
        offset, run_id, last, pruned_at = 0, None, None, None
        best, best_epoch = None, None  # objective best_epoch: the best evaluation so far and its (1-based) epoch
        reported: set[int] = set()
        started = time.monotonic()
        while True:
            rc = proc.poll()
            records, offset, seen = read_metrics(log_path, offset)
            if seen and run_id is None:
                run_id = seen
                trial.set_user_attr("run_id", run_id)
                self._adopt_child(run_id, trial.number)
            for entry in records:
                if entry.get("kind") != "metrics" or self.space.metric not in entry["metrics"]:
                    continue
                last = float(entry["metrics"][self.space.metric])
                if entry["step"] in reported:
                    continue
                reported.add(entry["step"])
                if best is None or self.space.better(last, best):
                    best, best_epoch = last, len(reported)
                # best_epoch: the pruner sees the best value so far, so a trial that peaks early and then
                # overfits is judged by its peak, which is what the study ranks it by.
                trial.report(best if self.space.objective == "best_epoch" else last, entry["step"])
                if rc is None and trial.should_prune():
                    pruned_at = entry["step"]
                    break
            if pruned_at is not None or rc is not None:
                break
            if time.monotonic() - started > self.s.trial_timeout_s:
                self._stop(proc)
                self._drop(trial, "trainer", f"timed out after {self.s.trial_timeout_s:.0f} s")
                self._finish_child(run_id, "FAILED")
                return
            time.sleep(self.s.poll_s)
        if pruned_at is not None:
            self._stop(proc)
            print(f"sweep[{self.s.worker_index}]: trial {trial.number} pruned at step {pruned_at} "
                  f"({self.space.metric} {last:.4f})", file=sys.stderr, flush=True)
            self._finish_child(run_id, "KILLED", {"mlenv.sweep.state": "PRUNED"})
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        if rc != 0 or last is None:
            why = (f"the trainer exited with {rc}" if rc != 0 else
                   f"the trainer never logged {self.space.metric}")
            print(f"sweep[{self.s.worker_index}]: trial {trial.number} failed: {why}; log: {run_dir}/trainer.log",
                  file=sys.stderr, flush=True)
            self._drop(trial, "trainer", why)
            self._finish_child(run_id, None, {"mlenv.sweep.state": "FAIL"})
            return
        value = last
        if self.space.objective == "best_epoch":
            value = best
            trial.set_user_attr("best_epoch", best_epoch)
        self._finish_child(run_id, None, {"mlenv.sweep.state": "COMPLETE"})
        self.study.tell(trial, value)
        print(f"sweep[{self.s.worker_index}]: trial {trial.number} done: {self.space.metric} {value:.4f}"
              + (f" (epoch {best_epoch}; last {last:.4f})" if self.space.objective == "best_epoch" else ""),
              file=sys.stderr, flush=True)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()

    # -- MLflow: each trial's run is a child of the sweep's parent run --------------------------------------
    def _adopt_child(self, run_id: str, number: int) -> None:
        if self.client is None:
            return
        try:
            self.client.set_tag(run_id, "mlflow.parentRunId", self.s.parent_run_id)
            self.client.set_tag(run_id, "mlenv.sweep.trial", str(number))
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a sweep
            print(f"sweep: could not tag MLflow run {run_id} as a child of the sweep: {exc}", file=sys.stderr)

    def _finish_child(self, run_id: str | None, status: str | None, tags: dict[str, str] | None = None) -> None:
        if self.client is None or run_id is None:
            return
        try:
            for key, value in (tags or {}).items():
                self.client.set_tag(run_id, key, value)
            if status:
                self.client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001
            print(f"sweep: could not update MLflow run {run_id}: {exc}", file=sys.stderr)


def run_worker(study: Any, space: Space, settings: WorkerSettings) -> int:
    return Worker(study, space, settings).run()
