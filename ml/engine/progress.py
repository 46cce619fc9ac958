"""A live progress bar (step, loss, samples/s, ETA) on a terminal; one plain line every N steps otherwise."""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressReporter"]


class ProgressReporter:
    def __init__(self, total_steps: int, *, start_step: int = 0, enabled: bool = True, log_every: int = 20,
                 stream=None) -> None:
        self.total, self.enabled, self.log_every = total_steps, enabled, log_every
        self.stream = stream or sys.stderr
        self.start_step = start_step
        self.started = time.perf_counter()
        self._bar = None
        self._task = None
        if enabled and self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.0f} samples/s"),
                                 TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, loss=float("nan"), rate=0.0)

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, rate=samples_per_s)
            return
        if step % self.log_every == 0 or step == self.total:
            done = max(step - self.start_step, 1)
            eta = (time.perf_counter() - self.started) / done * (self.total - step)
            print(f"step {step}/{self.total}  loss {loss:.4f}  {samples_per_s:,.0f} samples/s  eta {eta:,.0f}s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
