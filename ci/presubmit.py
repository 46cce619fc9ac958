"""Presubmit: lint, lock freshness, and exactly the tests and images a change affects.

    tools/bazel run //ci:presubmit -- --base origin/main [--gpu] [--dry-run] [--out DIR]
    ci/presubmit --base origin/main            # the same

1. Lint: buildifier (format) on BUILD/.bzl/WORKSPACE files, ruff on Python; fix with `tools/bazel run //ci:fix`.
2. Lock freshness: the tests in ci/presubmit.json `always_test` (//third_party/pip:lock_test) run every time.
   Owners: the changed files grouped by the OWNERS file nearest to each (ci/private/owners.py); a malformed
   OWNERS file fails presubmit.
3. Affected targets: `git diff <base>` (+ untracked files) mapped to targets with `bazel query`
   (ci/private/selection.py says how lock, WORKSPACE, .bazelrc, toolchain, .bzl and deleted files count).
4. Run: images (tag mlenv_image) built; affected tests (CPU lane, which includes the images' reproducibility
   tests, tag mlenv_image_repro); with --gpu, the affected GPU tests under --config=gpu.
5. Report: JUnit XML of every test under <out>/junit/<lane>/, a summary printed and written to
   <out>/summary.txt; the exit code is non-zero when lint or any Bazel command failed.

--dry-run runs git and the read-only queries, then prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from ci.private.bazel import Bazel, BazelError
from ci.private.changes import ChangesError, changed_files
from ci.private.lanes import plan
from ci.private.owners import OwnersError, reviews
from ci.private.report import LaneResult, Report, gather_junit
from ci.private.selection import Config, ConfigError, Selector
from tools.lint.lint import FIX_COMMAND, Linter

BASE_FLAGS = ["--config=ci"]


def _repo_dirs(root: Path, repo: str) -> list[Path]:
    """Where repository `repo` sits in a runfiles root: under its name (WORKSPACE), or under its canonical name
    ending in `~repo` / `+repo` (Bzlmod: a module extension's repository, e.g. `_main~mlenv~mlenv_ruff`)."""
    return [root / repo, *sorted(root.glob(f"*~{repo}")), *sorted(root.glob(f"*+{repo}"))]


def _runfiles_tool(repo: str, name: str) -> str:
    for root in (os.environ.get("RUNFILES_DIR", ""), str(Path(__file__).resolve().parent.parent.parent)):
        for candidate in (_repo_dirs(Path(root), repo) if root else []):
            if (candidate / name).exists():
                return str(candidate / name)
    return str(Path.cwd().parent / repo / name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="presubmit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="revision to diff against, e.g. origin/main")
    parser.add_argument("--gpu", action="store_true", help="also run the GPU lane (--config=gpu) for affected GPU tests")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--out", type=Path, help="report folder (default: <workspace>/.mlenv/presubmit)")
    parser.add_argument("--no-lint", action="store_true", help="skip buildifier and ruff")
    parser.add_argument("--bazel-flag", action="append", default=[], metavar="FLAG",
                        help="extra flag for every lane, e.g. --bazel-flag=--nocache_test_results")
    parser.add_argument("--workspace", type=Path,
                        default=Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")), help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="presubmit config (default: <workspace>/ci/presubmit.json)")
    parser.add_argument("--bazel", default="tools/bazel", help=argparse.SUPPRESS)
    parser.add_argument("--startup-option", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--buildifier", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ruff", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workspace = args.workspace.resolve()
    out = (args.out or workspace / ".mlenv/presubmit").resolve()
    bazel = Bazel(workspace, args.bazel, list(args.startup_option))
    report = Report()
    started = time.monotonic()
    ok = True

    try:
        config = Config.load(args.config or workspace / "ci/presubmit.json")
        changes = changed_files(workspace, args.base)
    except (ConfigError, ChangesError) as exc:
        print(f"presubmit: {exc}", file=sys.stderr)
        return 2

    report.section(f"changes against {args.base}: {len(changes)} file(s)")
    for change in changes[:30]:
        report.add(f"  {change.describe()}")
    if len(changes) > 30:
        report.add(f"  ... {len(changes) - 30} more")

    report.section("owners (who reviews; the nearest OWNERS file up the tree)")
    try:
        for review in reviews(workspace, dict.fromkeys(p for c in changes for p in c.paths_before() + c.paths_after())):
            who = ", ".join(review.owners) if review.owners_file else "no OWNERS file covers these"
            report.add(f"  {who}  <- {review.owners_file or '-'}: {len(review.paths)} file(s), e.g. {review.paths[0]}")
    except OwnersError as exc:
        ok = False
        report.add(f"  FAILED: {exc}")

    if not args.no_lint:
        linter = Linter(workspace, args.buildifier or _runfiles_tool("mlenv_buildifier", "buildifier"),
                        args.ruff or _runfiles_tool("mlenv_ruff", "ruff"))
        report.section("lint")
        if args.dry_run:
            for tool, command in linter.check_commands():
                shown = command if tool != "buildifier" else [*command[:3], f"<{len(command) - 3} Starlark files>"]
                report.add("  would run: " + Bazel.render(shown))
        else:
            for result in linter.check():
                ok &= result.ok
                report.add(f"  {result.tool}: {'ok' if result.ok else 'FAILED'}")
                if not result.ok:
                    report.add("    " + result.output.replace("\n", "\n    "))
            if not ok:
                report.add(f"  fix: {FIX_COMMAND}")

    try:
        selection = Selector(workspace, bazel, config).select(changes)
    except BazelError as exc:
        report.section("selection FAILED (bazel query)")
        report.add(str(exc))
        return _finish(report, out, False, started)

    tests = sorted(label for label, info in selection.rules.items() if info.is_test)
    report.section(f"selected: {'EVERYTHING' if selection.everything else f'{len(selection.rules)} rule(s)'}, "
                   f"{len(tests)} test(s)")
    for seed, whys in sorted(selection.seeds.items()):
        report.add(f"  {seed}  <- {'; '.join(dict.fromkeys(whys))}")
    for line in selection.unused:
        report.add(f"  (selects nothing) {line}")
    if not selection.everything:
        for label in tests[:40]:
            report.add(f"  test {label}  <- {selection.reasons.get(label, '?')}")
        if len(tests) > 40:
            report.add(f"  ... {len(tests) - 40} more tests")

    # With a cache URL in the environment, every lane reads and writes the remote cache (tools/bazel adds it).
    flags = BASE_FLAGS + (["--config=remote-cache"] if os.environ.get("MLENV_REMOTE_CACHE") else []) + args.bazel_flag
    the_plan = plan(selection, list(config.always_test), args.gpu, flags)
    report.section("plan")
    report.add(f"  images: build {', '.join(the_plan.image_targets) or 'none affected'}")
    report.add(f"  images: reproducibility tests (run in the cpu lane): {', '.join(the_plan.image_repro_tests) or 'none affected'}")
    if config.always_test:
        report.add(f"  always: {', '.join(config.always_test)} (lock freshness)")
    for line in the_plan.skipped:
        report.add(f"  skipped: {line}")

    if out.exists() and not args.dry_run:
        shutil.rmtree(out)
    results = []
    for lane in the_plan.lanes:
        argv_ = lane.argv(bazel.command)
        report.section(f"lane {lane.name}: {lane.verb} {len(lane.targets)} target(s), {len(lane.tests)} test(s)")
        report.add("  " + ("would run: " if args.dry_run else "$ ") + Bazel.render(argv_))
        if args.dry_run:
            continue
        print(f"presubmit: running lane {lane.name}: {Bazel.render(argv_[:6])} ...", flush=True)
        lane_started = time.monotonic()
        exit_code = bazel.run(argv_).returncode
        if exit_code == 4 and lane.verb == "test" and not lane.tests:
            exit_code = 0  # "no test targets": the lane only built
        results.append(LaneResult(lane.name, Bazel.render(argv_), exit_code, lane.tests))
        report.add(f"  exit {exit_code} after {time.monotonic() - lane_started:.0f} s")
        if lane.tests:
            testlogs = Path(bazel.info("bazel-testlogs", *lane.flags))
            missing = gather_junit(testlogs, lane.tests, out / "junit" / lane.name)
            report.add(f"  JUnit: {report.junit_totals(out / 'junit' / lane.name)} ({out / 'junit' / lane.name})")
            if missing and exit_code == 0:
                report.add(f"  no test.xml (filtered by tag or not run): {', '.join(missing[:5])}")
        ok &= exit_code == 0
    return _finish(report, out, ok, started, dry_run=args.dry_run)


def _finish(report: Report, out: Path, ok: bool, started: float, dry_run: bool = False) -> int:
    report.section(f"presubmit {'DRY RUN' if dry_run else 'PASSED' if ok else 'FAILED'} "
                   f"in {time.monotonic() - started:.0f} s")
    text = report.text()
    print(text, end="")
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.txt").write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
