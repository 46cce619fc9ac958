"""`bazel run //ml/<project>:sweep`: an Optuna hyperparameter study over a project's trainer, from one command.

    tools/bazel run //ml/homefeed:sweep -- --trials 8 --parallel 2
    tools/bazel run //ml/homefeed:sweep -- --space ml/homefeed/sweep.yaml --storage postgresql+psycopg://...

It exists so that tuning is a tracked, resumable object instead of a shell loop: the study lives in an RDB
storage (sqlite under .mlenv/ by default, PostgreSQL for workers on several machines), each trial is an
ordinary trainer run (tools/sweep/worker.py) that is an MLflow child run of one parent run per sweep, and
rerunning the same command after a crash continues the study. Phases, each also available alone so a
launcher can fan the workers out (docs/sweeps.md):

    --prepare-only   validate the space against the trainer's config, reach the storage, create the study,
                     check with a 1-step probe run that the trainer reports the metric, open the parent run
    --worker         run trials until the study holds --trials finished ones (any number of these at once)
    --report-only    trials table, best config (best.yaml, best_args.txt), plots logged to MLflow

Without a phase flag it does all three, the workers being --parallel N processes on this machine, N Ray
jobs (--on ray: tools/sweep/ray_fanout.py) or one Indexed Job of N pods (--on k8s: tools/sweep/k8s.py).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tools.sweep import worker as worker_mod
from tools.sweep.space import Space, SpaceError, as_set_value, check_against_config, load_space

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no MLflow usage telemetry from sweeps (as the engine)

__all__ = ["main"]


class SweepError(RuntimeError):
    """A failure the user can fix; printed without a traceback."""


def _workspace() -> Path:
    from ml.engine.tracking import workspace_dir

    return workspace_dir()


def _user_path(value: str) -> Path:
    """Relative paths on the command line mean the user's workspace under `bazel run`, not the runfiles."""
    path = Path(value)
    if path.is_absolute():
        return path
    base = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd()
    candidate = Path(base) / path
    return candidate if candidate.exists() or not path.exists() else path.absolute()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--space", help="the search-space YAML (default: the one the :sweep target names)")
    p.add_argument("--trials", type=int, default=None, help="finished (complete or pruned) trials to reach "
                   "(default: 20)")
    p.add_argument("--parallel", type=int, default=1, help="workers: processes on this machine (default 1), "
                   "Ray jobs with --on ray, pods with --on k8s")
    p.add_argument("--storage", help="Optuna RDB storage URL (default sqlite:///<workspace>/.mlenv/sweeps.db), "
                   "e.g. postgresql+psycopg://user@host:5432/db; env:NAME reads it from variable NAME")
    p.add_argument("--study", help="study name (default: <project>-<space file stem>); also the MLflow experiment")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a trainer config override for every trial (repeatable), e.g. --set epochs=2")
    p.add_argument("--out", help="sweep folder: trial run dirs, best.yaml, plots "
                   "(default <workspace>/.mlenv/sweeps/<study>)")
    p.add_argument("--max-failures", type=int, default=0, help="stop after this many failed trials (default: --trials)")
    p.add_argument("--heartbeat", type=int, default=5, help="seconds between trial heartbeats; a trial silent for "
                   "3x this is failed and re-queued (default 5)")
    p.add_argument("--trial-timeout", type=float, default=3600.0, help="seconds before a trial is stopped as failed")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--on", choices=("local", "ray", "k8s"), default="local",
                   help="where the workers run: local processes (default), Ray jobs, or a Kubernetes Indexed Job")
    p.add_argument("--address", help="--on ray: a running cluster's dashboard (http://HOST:8265) or `local` "
                   "(a throwaway cluster on this machine, one 1-CPU node per worker)")
    k8s = p.add_argument_group("--on k8s (docs/sweeps.md)")
    k8s.add_argument("--dry-run", action="store_true", help="print the manifests; run nothing")
    k8s.add_argument("--repository", help="REGISTRY/NAME the train image was pushed to (pinned by digest)")
    k8s.add_argument("--storage-secret", metavar="SECRET:KEY", help="the Secret key holding the storage URL "
                     "(with its password) for the pods; never put the password in the manifest")
    k8s.add_argument("--namespace", help="namespace of the Job (default: the context's)")
    k8s.add_argument("--context", help="kube context (default: the current one)")
    k8s.add_argument("--name", help="Job name (default: <study>-sweep-<time>)")
    k8s.add_argument("--skip-push-check", action="store_true",
                     help="do not ask the registry whether the image digest is there")
    k8s.add_argument("--tracking-uri", help="MLFLOW_TRACKING_URI for the pods (an MLflow server they reach)")
    k8s.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPU request per worker pod (default 1)")
    k8s.add_argument("--memory-per-worker", help="memory request per worker pod, e.g. 4Gi")
    phase = p.add_mutually_exclusive_group()
    phase.add_argument("--prepare-only", action="store_true", help="validate, create the study, probe; no trials")
    phase.add_argument("--worker", action="store_true", help="only run trials (for launchers; see docs/sweeps.md)")
    phase.add_argument("--report-only", action="store_true", help="only print the table, best config and plots")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    # Set by the ml_sweep macro, not by users.
    p.add_argument("--trainer", help=argparse.SUPPRESS)
    p.add_argument("--config-class", required=True, help=argparse.SUPPRESS)
    p.add_argument("--project", required=True, help=argparse.SUPPRESS)
    p.add_argument("--train-label", default="", help=argparse.SUPPRESS)
    p.add_argument("--default-space", default="", help=argparse.SUPPRESS)
    p.add_argument("--image-info", help=argparse.SUPPRESS)
    # The trainer as a command line (JSON list) instead of --trainer: the image's Entrypoint in k8s pods.
    p.add_argument("--trainer-command", help=argparse.SUPPRESS)
    return p


# -- inputs ---------------------------------------------------------------------------------------------------
def _config_class(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _base_sets(space: Space, cli_sets: list[str]) -> list[str]:
    for item in cli_sets:
        key = item.partition("=")[0].strip()
        if "=" not in item:
            raise SweepError(f"--set {item!r}: expected KEY=VALUE, e.g. --set epochs=2")
        if key in {p.name for p in space.params}:
            raise SweepError(f"--set {item!r}: {key} is tuned by the space file; remove it from --set or from params")
    return [f"{k}={as_set_value(v)}" for k, v in space.fixed.items()] + list(cli_sets)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def _storage(url: str, heartbeat: int) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except (optuna.exceptions.StorageInternalError, Exception) as exc:  # noqa: BLE001 - any failure: cannot use it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"cannot use the storage {_redact(url)}: {first}\n  Start the database (or fix the URL) "
                         f"and rerun; without --storage the sweep uses sqlite under .mlenv/") from None


def _reported_metrics(log_path: Path) -> set[str]:
    names: set[str] = set()
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("kind") == "metrics":
                names.update(entry["metrics"])
    return names


# -- prepare --------------------------------------------------------------------------------------------------
def prepare(args: argparse.Namespace, space: Space, base_sets: list[str], storage: Any, sweep_dir: Path) -> Any:
    import optuna

    try:
        study = optuna.load_study(study_name=args.study, storage=storage)
    except KeyError:
        study = optuna.create_study(study_name=args.study, storage=storage, direction=space.direction)
        study.set_user_attr("space_digest", space.digest())
        study.set_user_attr("space_file", str(space.path))
        study.set_user_attr("metric", space.metric)
        study.set_user_attr("base_sets", base_sets)
    _check_same_study(study, space, base_sets)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    parent = _parent_run(study, space, args, storage_url=args.storage)
    reported = study.user_attrs.get("reported_metrics")
    if not reported:
        reported = sorted(_probe(args, study, base_sets, sweep_dir, parent))
        if space.metric in reported:
            study.set_user_attr("reported_metrics", reported)
    if space.metric not in reported:
        client, run_id = parent
        if client is not None:
            client.set_terminated(run_id, "FAILED")
        raise SweepError(f"the trainer never reports {space.metric!r} (a 1-step probe run logged: "
                         f"{', '.join(reported) or 'nothing'}); set metric: in {space.path} to one of those")
    return study


def _check_same_study(study: Any, space: Space, base_sets: list[str]) -> None:
    import optuna

    want = optuna.study.StudyDirection.MAXIMIZE if space.direction == "maximize" else optuna.study.StudyDirection.MINIMIZE
    if study.direction != want or study.user_attrs.get("space_digest") != space.digest():
        raise SweepError(f"study {study.study_name!r} in this storage was created from another space "
                         f"({study.user_attrs.get('space_file')}, digest {study.user_attrs.get('space_digest')}); "
                         f"pass --study NEW_NAME to start a new study, or restore the space file")
    if study.user_attrs.get("base_sets") != base_sets:
        raise SweepError(f"study {study.study_name!r} ran its trials with {study.user_attrs.get('base_sets')} but "
                         f"this command sets {base_sets}; results would not be comparable. Pass the same --set "
                         f"values, or --study NEW_NAME")


def _tracking() -> tuple[Any, Any]:
    import mlflow

    from ml.engine.tracking import default_tracking_target

    target = default_tracking_target()
    return mlflow.MlflowClient(target.tracking_uri), target


def _parent_run(study: Any, space: Space, args: argparse.Namespace, storage_url: str) -> tuple[Any, str]:
    client, target = _tracking()
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return client, run_id
        except Exception:  # noqa: BLE001, S110 - the tracking store was replaced; open a new parent run
            pass
    experiment = client.get_experiment_by_name(study.study_name)
    experiment_id = (experiment.experiment_id if experiment else
                     client.create_experiment(study.study_name, artifact_location=target.artifact_root))
    tags = {"mlenv.sweep.study": study.study_name, "mlenv.sweep.storage": _redact(storage_url),
            "mlenv.sweep.space_digest": space.digest(), "mlenv.project": args.project}
    run = client.create_run(experiment_id, run_name=f"{study.study_name}-sweep", tags=tags)
    from mlflow.entities import Param

    params = {"metric": space.metric, "direction": space.direction, "sampler": space.sampler,
              "pruner": space.pruner, "seed": space.seed,
              **{f"fixed.{k}": as_set_value(v) for k, v in space.fixed.items()},
              **{f"space.{p.name}": (f"{p.type}[{p.low}, {p.high}]{' log' if p.log else ''}" if p.type != "categorical"
                                     else f"categorical{list(p.choices)}") for p in space.params}}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
    client.log_artifact(run.info.run_id, str(space.path))
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return client, run.info.run_id


def _probe(args: argparse.Namespace, study: Any, base_sets: list[str], sweep_dir: Path,
           parent: tuple[Any, str]) -> set[str]:
    """One optimizer step and an evaluation: which metrics does this trainer log under these settings?"""
    run_dir = sweep_dir / "probe"
    log = run_dir / "tracking.jsonl"
    if log.exists():
        log.unlink()
    cmd = [args.trainer, *[x for s in base_sets for x in ("--set", s)], "--max-steps", "1", "--no-export",
           "--set", f"run_dir={run_dir}", "--set", f"run_name={study.study_name}-probe",
           "--set", f"experiment={study.study_name}"]
    print(f"sweep: probing the trainer (1 step + evaluation) for the metrics it reports: {run_dir}",
          file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.trial_timeout)
    _, _, run_id = worker_mod.read_metrics(log, 0)
    client, parent_id = parent
    if run_id and client is not None:
        try:
            client.set_tag(run_id, "mlflow.parentRunId", parent_id)
            client.set_tag(run_id, "mlenv.sweep.role", "probe")
        except Exception:  # noqa: BLE001, S110 - tagging the probe run is best effort
            pass
    if proc.returncode != 0:
        raise SweepError(f"the trainer failed its 1-step probe run with the sweep's fixed settings "
                         f"(exit {proc.returncode}); fix those before tuning:\n{proc.stderr[-3000:]}")
    return _reported_metrics(log)


# -- workers --------------------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, study: Any, base_sets: list[str], sweep_dir: Path) -> worker_mod.WorkerSettings:
    _, target = _tracking()
    return worker_mod.WorkerSettings(
        trainer=args.trainer, trainer_command=args.trainer_command, trials=args.trials, sweep_dir=sweep_dir, base_sets=base_sets,
        parent_run_id=study.user_attrs.get("mlflow_parent_run_id"), tracking_uri=target.tracking_uri,
        worker_index=args.worker_index, max_failures=args.max_failures, trial_timeout_s=args.trial_timeout)


def _worker_argv(args: argparse.Namespace, index: int) -> list[str]:
    argv = [sys.argv[0], "--worker", "--worker-index", str(index), "--space", str(args.space), "--trials",
            str(args.trials), "--storage", args.storage, "--study", args.study, "--out", str(args.out),
            "--max-failures", str(args.max_failures), "--heartbeat", str(args.heartbeat),
            "--trial-timeout", str(args.trial_timeout), "--trainer", args.trainer,
            "--config-class", args.config_class, "--project", args.project]
    for item in args.sets:
        argv += ["--set", item]
    return argv


def run_local_workers(args: argparse.Namespace, study: Any, space: Space, base_sets: list[str],
                      sweep_dir: Path) -> None:
    """Worker 0 in this process, workers 1..N-1 as child processes; all share the storage."""
    procs = []
    for index in range(1, args.parallel):
        python = [sys.executable, *(["-S"] if sys.flags.no_site else [])]
        procs.append(subprocess.Popen([*python, *_worker_argv(args, index)],
                                      preexec_fn=worker_mod._die_with_parent))
    study.sampler = space.make_sampler(0)
    study.pruner = space.make_pruner()
    error = None
    try:
        worker_mod.run_worker(study, space, _settings(args, study, base_sets, sweep_dir))
    except RuntimeError as exc:
        error = exc
    codes = [p.wait() for p in procs]
    if error or any(codes):
        raise SweepError(f"{error or ''}" + (f" worker exit codes: {codes}" if any(codes) else ""))


# -- report ---------------------------------------------------------------------------------------------------
def report(args: argparse.Namespace, study: Any, space: Space, base_sets: list[str], sweep_dir: Path) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    rows = []
    for t in trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"trial": t.number, "state": t.state.name, space.metric: t.value,
                     "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                     "seconds": round(duration, 1) if duration is not None else None,
                     **{f"param.{k}": v for k, v in t.params.items()},
                     "note": t.user_attrs.get("sweep_message") or t.user_attrs.get(worker_mod.REASON) or "",
                     "run_id": t.user_attrs.get("run_id") or ""})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    _print_table(rows, columns)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": study.study_name, "finished": len(finished),
                               "complete": len(complete), "pruned": len(finished) - len(complete),
                               "trials_csv": str(sweep_dir / "trials.csv"), "plots": []}
    client, _ = _tracking()
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    _close_dead_children(client, trials)
    if complete:
        best = study.best_trial
        sets = base_sets + [f"{k}={as_set_value(v)}" for k, v in sorted(best.params.items())]
        best_config = {s.partition("=")[0]: s.partition("=")[2] for s in base_sets}
        best_config.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in best.params.items()})
        if space.objective == "best_epoch" and best.user_attrs.get("best_epoch"):
            # The trial's value is its best epoch's evaluation: the retrain stops after that epoch. Engine
            # trainers have no schedule that depends on the epoch count, so epoch k of a longer run and the
            # last epoch of an `epochs=k` run are the same model.
            epochs = int(best.user_attrs["best_epoch"])
            sets = [s for s in sets if s.partition("=")[0] != "epochs"] + [f"epochs={epochs}"]
            best_config["epochs"] = epochs
            summary["best_epoch"] = epochs
        import yaml

        (sweep_dir / "best.yaml").write_text(
            f"# best of {len(finished)} trials of study {study.study_name}: trial {best.number}, "
            f"{space.metric} = {best.value}\n# train with: tools/bazel run {args.train_label or '<trainer>'} -- "
            f"--config {sweep_dir / 'best.yaml'}\n" + yaml.safe_dump(best_config, sort_keys=True))
        (sweep_dir / "best_args.txt").write_text("".join(f"--set\n{s}\n" for s in sets))
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params, best_sets=sets,
                       best_yaml=str(sweep_dir / "best.yaml"), best_run_id=best.user_attrs.get("run_id"))
    if not args.no_plots and complete:
        summary["plots"] = _plots(study, sweep_dir)
    if parent_id:
        try:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            metrics = [Metric("sweep/finished_trials", float(len(finished)), ts, 0),
                       Metric("sweep/pruned_trials", float(summary["pruned"]), ts, 0)]
            if complete:
                metrics.append(Metric(f"best/{space.metric}", float(summary["best_value"]), ts, 0))
            client.log_batch(parent_id, metrics=metrics)
            for path in summary["plots"]:
                client.log_artifact(parent_id, path, "plots")
            for name in ("trials.csv", "best.yaml", "best_args.txt"):
                if (sweep_dir / name).exists():
                    client.log_artifact(parent_id, str(sweep_dir / name))
            if complete:
                client.set_tag(parent_id, "mlenv.sweep.best_trial", str(summary["best_trial"]))
            client.set_terminated(parent_id, "FINISHED" if len(finished) >= args.trials else "KILLED")
        except Exception as exc:  # noqa: BLE001 - the study is the record; tracking is a view of it
            print(f"sweep: could not log the summary to MLflow run {parent_id}: {exc}", file=sys.stderr)
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    lines = [f"sweep {study.study_name}: {len(finished)} finished trials ({summary['pruned']} pruned)"]
    if complete:
        lines += [f"  best:      trial {summary['best_trial']}, {space.metric} {summary['best_value']:.4f}, "
                  + ", ".join(f"{k}={as_set_value(v)}" for k, v in sorted(summary["best_params"].items())),
                  f"  config:    {summary['best_yaml']}",
                  f"  retrain:   tools/bazel run {args.train_label or '<trainer>'} -- --config {summary['best_yaml']}",
                  "             (or the same as --set arguments: " + str(sweep_dir / "best_args.txt") + ")"]
    lines += [f"  trials:    {summary['trials_csv']}"] + [f"  plot:      {p}" for p in summary["plots"]]
    if parent_id:
        lines.append(f"  mlflow:    run {parent_id} (experiment {study.study_name}); trials are its child runs")
    print("\n".join(lines), flush=True)
    return summary


def _close_dead_children(client: Any, trials: list) -> None:
    """Runs of trials that died with their worker (SIGKILL) stay RUNNING in MLflow; mark them KILLED."""
    from optuna.trial import TrialState

    for t in trials:
        run_id = t.user_attrs.get("run_id")
        if t.state == TrialState.FAIL and run_id:
            try:
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_terminated(run_id, "KILLED")
            except Exception:  # noqa: BLE001, S110 - best effort while stopping
                pass


def _print_table(rows: list[dict], columns: list[str]) -> None:
    shown = [c for c in columns if c != "run_id"]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) if rows else len(c) for c in shown}
    print("  ".join(c.ljust(widths[c]) for c in shown))
    for r in rows:
        print("  ".join(cell(r.get(c)).ljust(widths[c]) for c in shown))


def _plots(study: Any, sweep_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = []
    for name, fn in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                     ("parallel_coordinates", ovm.plot_parallel_coordinate)):
        path = sweep_dir / "plots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            out.append(str(path))
        except Exception as exc:  # noqa: BLE001 - e.g. importances need two complete trials
            print(f"sweep: no {name} plot: {exc}", file=sys.stderr)
    return out


# -- entry ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    import optuna

    # fail_stale_trials, the retry callback and the matplotlib plots are marked experimental in Optuna 5.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _main(args)
    except (SpaceError, SweepError) as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2


def _check_backend(args: argparse.Namespace) -> None:
    """--on ray/k8s refusals that need nothing but the command line, before anything starts."""
    from tools.sweep import ray_fanout

    if args.on == "local":
        if args.address:
            raise SweepError("--address is for --on ray; add --on ray, or drop it")
        if args.dry_run:
            raise SweepError("--dry-run is for --on k8s (it prints the manifests); add --on k8s, or drop it")
        return
    if args.worker or args.report_only or args.prepare_only:
        raise SweepError(f"--on {args.on} runs the whole sweep; --prepare-only/--worker/--report-only are the "
                         "phases it runs itself (use them without --on)")
    if args.on == "ray":
        if args.dry_run:
            raise SweepError("--dry-run is for --on k8s; --on ray submits jobs (try --on ray --trials 1)")
        try:
            args.address = ray_fanout.check_request(args.address, args.storage,
                                                    os.environ.get("MLFLOW_TRACKING_URI"))
        except ray_fanout.FanoutError as exc:
            raise SweepError(str(exc)) from None
    if args.on == "k8s" and args.address:
        raise SweepError("--address is for --on ray; --on k8s uses the current kube context")
    if args.on == "k8s" and not args.dry_run and (not args.storage or ray_fanout.local_storage(args.storage)):
        raise SweepError("--on k8s: the pods cannot share a sqlite file. Pass --storage URL: the PostgreSQL "
                         "database the --storage-secret names, as reached from here (this command prepares the "
                         "study and reports from it)")


def _main(args: argparse.Namespace) -> int:
    if args.trials is None:
        args.trials = 20
    if args.trials < 1 or args.parallel < 1 or args.heartbeat < 1:
        raise SweepError("--trials, --parallel and --heartbeat must be >= 1")
    if args.storage and args.storage.startswith("env:"):
        name = args.storage[len("env:"):]
        if not os.environ.get(name):
            raise SweepError(f"--storage env:{name}: the variable {name} is not set (in a pod: check the Secret "
                             "the Job's env refers to)")
        args.storage = os.environ[name]
    _check_backend(args)
    if args.on == "ray":
        from tools.sweep import ray_fanout

        try:
            ray_fanout.check_reachable(args.address)
        except ray_fanout.FanoutError as exc:
            raise SweepError(str(exc)) from None
        if args.address == "local":
            ray_fanout.isolate()  # re-execs this command in a private network namespace when root

    if not args.space and not args.default_space:
        raise SweepError("no --space given and the :sweep target names none")
    args.space = _user_path(args.space) if args.space else Path(args.default_space).absolute()
    if not args.trainer and not args.trainer_command:
        raise SweepError("no --trainer: run the sweep through its Bazel target (tools/bazel run //<project>:sweep)")
    args.trainer = str(Path(args.trainer).absolute()) if args.trainer else None
    if args.trainer_command is not None:
        try:
            command = json.loads(args.trainer_command)
        except ValueError:
            command = None
        if not isinstance(command, list) or not command or not all(isinstance(x, str) for x in command):
            raise SweepError(f"--trainer-command {args.trainer_command!r}: expected a JSON list of strings")
        args.trainer_command = command
    space = load_space(args.space)
    base_sets = _base_sets(space, args.sets)
    check_against_config(space, _config_class(args.config_class), base_sets)
    args.study = args.study or f"{args.project}-{args.space.stem}"
    workspace = _workspace()
    if not args.storage:
        (workspace / ".mlenv").mkdir(parents=True, exist_ok=True)
        args.storage = f"sqlite:///{workspace / '.mlenv' / 'sweeps.db'}"
    args.out = Path(args.out).absolute() if args.out else workspace / ".mlenv" / "sweeps" / args.study
    if args.on == "k8s":
        from tools.sweep import k8s as k8s_mod

        def prepare_and_report(run_workers) -> int:
            study = prepare(args, space, base_sets, _storage(args.storage, args.heartbeat), args.out)
            run_workers()
            report(args, study, space, base_sets, args.out)
            return 0

        try:
            return k8s_mod.main(args, prepare_and_report)
        except k8s_mod.K8sError as exc:
            raise SweepError(str(exc)) from None
    storage = _storage(args.storage, args.heartbeat)
    if args.worker or args.report_only:
        import optuna

        try:
            study = optuna.load_study(study_name=args.study, storage=storage, sampler=space.make_sampler(args.worker_index),
                                      pruner=space.make_pruner())
        except KeyError:
            raise SweepError(f"no study {args.study!r} in {_redact(args.storage)}; run `sweep --prepare-only` "
                             f"with the same --storage and --study first") from None
        _check_same_study(study, space, base_sets)
        if args.worker:
            if not study.user_attrs.get("reported_metrics"):
                raise SweepError(f"study {args.study!r} was not prepared (no metric probe yet); run --prepare-only")
            try:
                worker_mod.run_worker(study, space, _settings(args, study, base_sets, args.out))
            except RuntimeError as exc:
                raise SweepError(str(exc)) from None
            return 0
        report(args, study, space, base_sets, args.out)
        return 0
    study = prepare(args, space, base_sets, storage, args.out)
    print(f"sweep: study {args.study} in {_redact(args.storage)}: {space.metric} ({space.direction}), "
          f"{args.trials} trials, {args.parallel} worker(s), sampler {space.sampler}, pruner {space.pruner}; "
          f"trial runs in {args.out}/trials", file=sys.stderr, flush=True)
    if args.prepare_only:
        return 0
    if args.on == "ray":
        from tools.sweep import ray_fanout

        try:
            ray_fanout.run(args.address, [_worker_argv(args, i) for i in range(args.parallel)], args.out, args.study)
        except ray_fanout.FanoutError as exc:
            raise SweepError(str(exc)) from None
        except KeyboardInterrupt:
            print("sweep: stopped; rerun the same command to resume the study", file=sys.stderr)
            return 130
    else:
        run_local_workers(args, study, space, base_sets, args.out)
    report(args, study, space, base_sets, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
