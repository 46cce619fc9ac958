"""Which trials a pruner stops, per sweep objective, replayed on a finished unpruned study's recorded evaluations.

    tools/bazel run //tools/bench:sweep_pruning_replay -- --storage sqlite:////tmp/sweep-bench-XXXX/optuna.db \
        --study homefeed-pruner-none

A real pruned sweep costs as much as the sweep itself (minutes per homefeed trial on a busy 2-core machine);
the trainers are deterministic, so a study run with `pruner: none` already holds every value a pruned run of
the same trials would see. This feeds those per-epoch values, trial by trial in their order, to Optuna's own
MedianPruner (the sweep's settings: startup_trials, warmup_steps) under each objective: `last` reports each
epoch's value and ranks by the last; `best_epoch` reports the best so far and ranks by it (docs/sweeps.md).
It prints which trials would be pruned and when, the best trial found, and the epochs trained (the
wall-time proxy: a trial's time is close to proportional to its epochs).

Caveat, printed too: a sampler whose proposals depend on earlier results (TPE after its startup trials)
could have proposed other parameters once trials were pruned; those trials are marked.
"""

from __future__ import annotations

import argparse
import sys
import warnings

__all__ = ["replay", "main"]


def replay(trials: list, objective: str, direction: str, startup: int, warmup: int) -> dict:
    """Replays `trials` (FrozenTrial, complete, with intermediate values) through a fresh in-memory study."""
    import optuna

    study = optuna.create_study(direction=direction, pruner=optuna.pruners.MedianPruner(
        n_startup_trials=startup, n_warmup_steps=warmup))
    better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
    rows, epochs_run, epochs_full = [], 0, 0
    for frozen in trials:
        trial = study.ask()
        steps = sorted(frozen.intermediate_values)
        epochs_full += len(steps)
        best, best_epoch, pruned_at = None, None, None
        for epoch, step in enumerate(steps, start=1):
            value = frozen.intermediate_values[step]
            if best is None or better(value, best):
                best, best_epoch = value, epoch
            trial.report(best if objective == "best_epoch" else value, step)
            epochs_run += 1
            if epoch < len(steps) and trial.should_prune():
                pruned_at = epoch
                break
        if pruned_at is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            rows.append((frozen.number, f"pruned after epoch {pruned_at}", None))
            continue
        value = best if objective == "best_epoch" else frozen.intermediate_values[steps[-1]]
        study.tell(trial, value)
        rows.append((frozen.number, "complete" + (f" (best epoch {best_epoch})" if objective == "best_epoch" else ""),
                     value))
    complete = [r for r in rows if r[2] is not None]
    best_row = (max if direction == "maximize" else min)(complete, key=lambda r: r[2])
    return {"rows": rows, "best": best_row, "epochs_run": epochs_run, "epochs_full": epochs_full}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="the Optuna storage of a finished `pruner: none` sweep")
    parser.add_argument("--study", required=True, help="its study name (sweep_bench: homefeed-pruner-none)")
    parser.add_argument("--startup-trials", type=int, default=2, help="MedianPruner n_startup_trials (default 2)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="MedianPruner n_warmup_steps (default 0)")
    parser.add_argument("--sampler-startup", type=int, default=4,
                        help="trials the sampler proposed independently of results (TPE's tpe_startup, default 4)")
    args = parser.parse_args()
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=args.study, storage=args.storage)
    except KeyError:
        print(f"sweep_pruning_replay: no study {args.study!r} in {args.storage}", file=sys.stderr)
        return 2
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not trials or any(len(t.intermediate_values) < 2 for t in trials):
        print("sweep_pruning_replay: the study needs complete trials with one evaluation per epoch (run the sweep "
              "with pruner: none)", file=sys.stderr)
        return 2
    direction = "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    print(f"study {args.study}: {len(trials)} complete trials, {direction}; MedianPruner(startup_trials="
          f"{args.startup_trials}, warmup_steps={args.warmup_steps})\n")
    print("| trial | per-epoch values | objective last | objective best_epoch |")
    print("|---|---|---|---|")
    results = {obj: replay(trials, obj, direction, args.startup_trials, args.warmup_steps)
               for obj in ("last", "best_epoch")}
    for i, t in enumerate(trials):
        values = ", ".join(f"{t.intermediate_values[s]:.4f}" for s in sorted(t.intermediate_values))
        cells = []
        for obj in ("last", "best_epoch"):
            _, what, value = results[obj]["rows"][i]
            cells.append(what + (f": {value:.4f}" if value is not None else ""))
        mark = "" if t.number < args.sampler_startup else " *"
        print(f"| {t.number}{mark} | {values} | {cells[0]} | {cells[1]} |")
    print()
    for obj in ("last", "best_epoch"):
        r = results[obj]
        unpruned = replay(trials, obj, direction, len(trials) + 1, 0)  # a pruner that never acts
        print(f"objective {obj}: with the median pruner best trial {r['best'][0]} ({r['best'][2]:.4f}), "
              f"{r['epochs_run']}/{r['epochs_full']} epochs trained ({r['epochs_run'] / r['epochs_full']:.2f}x); "
              f"without pruning best trial {unpruned['best'][0]} ({unpruned['best'][2]:.4f})")
    print(f"\n* proposed by the sampler after its {args.sampler_startup} startup trials: with pruning it could have "
          "proposed other parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
