"""`//tools:mlflow -- --compare RUN_A RUN_B`: two runs side by side in the terminal.

Looking at two runs in the UI means clicking through two pages and reading numbers across tabs; the question
"what did I change and what did it do" is a table: every param and every final metric of both runs, rows
that differ marked, so the change that matters is found by eye in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["print_table", "rows"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def rows(run_a: Any, run_b: Any) -> list[tuple[str, str, str, str, bool]]:
    """(section, key, value in A, value in B, differs) for the run itself, every param and final metric."""
    out = []
    for key, get in (("name", lambda r: r.info.run_name), ("status", lambda r: r.info.status),
                     ("experiment", lambda r: r.info.experiment_id)):
        a, b = get(run_a), get(run_b)
        out.append(("run", key, _fmt(a), _fmt(b), a != b))
    for section, field in (("param", "params"), ("metric", "metrics")):
        values_a, values_b = getattr(run_a.data, field), getattr(run_b.data, field)
        for key in sorted(set(values_a) | set(values_b)):
            a, b = values_a.get(key), values_b.get(key)
            out.append((section, key, _fmt(a), _fmt(b), a != b))
    return out


def print_table(runs: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    run_a, run_b = runs
    table = Table(title="params and final metrics (* differs)", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column(f"A {run_a.info.run_id[:12]}", overflow="fold")
    table.add_column(f"B {run_b.info.run_id[:12]}", overflow="fold")
    for section, key, a, b, differs in rows(run_a, run_b):
        table.add_row(section, ("* " if differs else "  ") + key, a, b, style="bold" if differs else None)
    Console(width=max(100, Console().width), soft_wrap=False).print(table)
