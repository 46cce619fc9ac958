"""`tools/bazel run //tools:tensorboard -- [--logdir DIR]`: TensorBoard from the locked environment.

`tensorboard` exists only inside the locked environment, so the command a trainer used to print failed on a
fresh machine. This one starts the locked TensorBoard on 127.0.0.1 and prints the URL once it answers:

    tools/bazel run //tools:tensorboard                                    # every run under .mlenv/runs/
    tools/bazel run //tools:tensorboard -- --logdir .mlenv/runs/homefeed/<run>/tensorboard
    tools/bazel run //tools:tensorboard -- --port 6007 --host 0.0.0.0

Relative paths are relative to the workspace. Profiler traces written by `--profile`
(`<run>/profile/*.pt.trace.json`, Chrome trace format) are listed with how to open them offline: the
TensorBoard profile plugin is not part of the locked environment (docs/toolbox.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tools.toolbox.serve import ToolboxError, choose_port, describe_binding, python_command, run_server, url_host, user_path, workspace

__all__ = ["find_event_files", "find_traces", "main"]

PROG = "tools/bazel run //tools:tensorboard --"
TOOL = "tensorboard"
DEFAULT_PORT = 6006
TRAIN_HINT = "train one first, e.g. `tools/bazel run //ml/homefeed:train`"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", help="folder of event files, searched recursively (default: .mlenv/runs/, "
                                         "every run of this workspace); relative to the workspace")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}, or a free one if it is taken; "
                                                 f"0: any free port; a given port that is taken is an error)")
    return parser


def find_event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.rglob("events.out.tfevents.*"))


def find_traces(logdir: Path) -> list[Path]:
    """Profiler traces in the logdir, or in the run folder around a run's `tensorboard/` folder."""
    roots = [logdir]
    if logdir.name == "tensorboard":
        roots.append(logdir.parent / "profile")
    found = set()
    for root in roots:
        if root.is_dir():
            found.update(root.rglob("*.pt.trace.json"))
            found.update(root.rglob("*.pt.trace.json.gz"))
    return sorted(found)


def _logdir(flag: str | None) -> Path:
    if flag is None:
        logdir = workspace() / ".mlenv" / "runs"
        if not logdir.is_dir():
            raise ToolboxError(f"no runs yet: {logdir} does not exist; {TRAIN_HINT}, or pass --logdir DIR")
    else:
        logdir = user_path(flag)
        if not logdir.exists():
            raise ToolboxError(f"--logdir {logdir} does not exist; pass a run's TensorBoard folder "
                               f"(the trainer prints it: .mlenv/runs/<project>/<run>/tensorboard) or omit "
                               f"--logdir to show every run under .mlenv/runs/")
        if not logdir.is_dir():
            raise ToolboxError(f"--logdir {logdir} is a file, not a folder; pass the folder that holds it")
    if not find_event_files(logdir):
        raise ToolboxError(f"no runs yet: no TensorBoard event files (events.out.tfevents.*) under {logdir}; "
                           f"{TRAIN_HINT}, or pass the --logdir of a run")
    return logdir


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        logdir = _logdir(args.logdir)
        port = choose_port(args.host, args.port, DEFAULT_PORT, TOOL)
    except ToolboxError as exc:
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        return 2
    base = f"http://{url_host(args.host)}:{port}"
    announce = [f"TensorBoard: {base}  ({describe_binding(args.host)}; logdir {logdir})"]
    traces = find_traces(logdir)
    if traces:
        announce.append(f"profiler traces ({len(traces)}; open offline in Perfetto or chrome://tracing, "
                        f"see docs/toolbox.md):")
        announce += [f"  {path}" for path in traces[:10]] + ([f"  ... {len(traces) - 10} more"] if len(traces) > 10
                                                            else [])
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = python_command("-m", "tensorboard.main", "--logdir", str(logdir), "--host", args.host,
                             "--port", str(port))
    print(f"{TOOL}: starting TensorBoard on {args.host}:{port}", file=sys.stderr, flush=True)
    return run_server(command, tool=TOOL, health_url=f"{base}/data/logdir", announce=announce, env=env)


if __name__ == "__main__":
    sys.exit(main())
