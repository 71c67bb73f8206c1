"""Progress of a sweep (or of one run): a bar on a terminal, a plain line now and then elsewhere.

On a terminal, one tqdm bar for the whole sweep: runs done / total, the current run's (or
group's) step and loss, elapsed and remaining time. When the output is not a terminal
(SLURM, nohup, a redirected log) bar frames joined by carriage returns would fill the log,
so a plain line is printed instead when the work done has grown by ``every_percent`` since
the last line or ``every_seconds`` have passed, and when a run starts or finishes::

    [progress] runs 2/12 | s3_c1e+13 step 40/96 loss 3.214 | 31% elapsed 0:42 remaining 1:33

Work is counted per step as the step's FLOPs plus :data:`STEP_OVERHEAD_FLOPS` (tiny
models are dispatch-bound, so FLOPs alone would make the ETA far too optimistic); a
group's step costs the sum of its runs' steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from lm.model.config import RunConfig

STEP_OVERHEAD_FLOPS = 2e8  # ETA weight of a step's fixed cost (~10 ms of host dispatch on a CPU)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class SweepProgress:
    """The progress display of a sweep; also the ``progress(step, total, metrics)`` callback
    that :func:`lm.train.solo.train` and the group trainers call after each step.

    Args:
      runs: the runs still to train (their cost sets the total work).
      done, total: runs already finished and runs in the sweep.
      enabled: False shows nothing (``--no-progress``).
      stream: where to write (default stderr).
      interactive: a bar (True) or plain lines (False); default: whether ``stream`` is a terminal.
      every_percent, every_seconds: plain lines: print when either has passed since the last.
    """

    def __init__(self, runs: Sequence[RunConfig], done: int, total: int, enabled: bool = True, *,
                 stream: TextIO | None = None, interactive: bool | None = None,
                 every_percent: float = 5.0, every_seconds: float = 30.0):
        from lm.model.counting import train_flops_per_token

        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.interactive = interactive if interactive is not None else bool(getattr(self.stream, "isatty", bool)())
        self.cost = {r.name: STEP_OVERHEAD_FLOPS + train_flops_per_token(r.model, r.data.seq_len)
                     * r.data.batch_size * r.data.seq_len for r in runs}
        self.work_total = sum(self.cost[r.name] * r.train.steps for r in runs)
        self.work_done = 0.0
        self.done, self.total = done, total
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self.t0 = time.monotonic()
        self._last_line = (-math.inf, -math.inf)  # (percent, time) of the last plain line
        self.label: str | None = None
        self.step_info = ""
        self.step_cost = 0.0
        self.last_step: int | None = 0
        self.bar = None
        if enabled and self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.work_total, file=self.stream, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
            self._show(force=False)

    # ------------------------------------------------------------------ display

    def describe(self) -> str:
        run = f" | {self.label}{self.step_info}" if self.label else ""
        return f"runs {self.done}/{self.total}{run}"

    def percent(self) -> float:
        return 100.0 * self.work_done / self.work_total if self.work_total > 0 else 100.0

    def line(self) -> str:
        """The plain progress line (what a non-terminal log gets)."""
        elapsed = time.monotonic() - self.t0
        frac = self.percent() / 100
        remaining = elapsed * (1 - frac) / frac if frac > 0 else math.inf
        return (f"[progress] {self.describe()} | {self.percent():.0f}% elapsed {_clock(elapsed)} "
                f"remaining {_clock(remaining)}")

    def _show(self, force: bool) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(self.describe(), refresh=False)
            self.bar.n = min(self.work_done, self.bar.total)
            self.bar.refresh()
            return
        now, pct = time.monotonic(), self.percent()
        last_pct, last_t = self._last_line
        if force or pct - last_pct >= self.every_percent or now - last_t >= self.every_seconds:
            self._last_line = (pct, now)
            print(self.line(), file=self.stream, flush=True)

    def write(self, message: str) -> None:
        """A message between progress lines (kept out of the bar)."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    # --------------------------------------------------------------- callbacks

    def start(self, runs: Sequence[RunConfig]) -> None:
        """A solo run (one run) or a group of runs trained together starts."""
        self.label = runs[0].name if len(runs) == 1 else f"{runs[0].name} +{len(runs) - 1} grouped"
        self.step_cost = sum(self.cost[r.name] for r in runs)
        self.last_step = None
        self.step_info = " starting"
        self._show(force=True)

    def __call__(self, step: int, total: int, metrics: Mapping[str, float]) -> None:
        if self.last_step is None:  # resumed: the skipped steps are not work done now
            self._shrink(self.step_cost * (step - 1))
            self.last_step = step - 1
        self.step_info = f" step {step}/{total} loss {metrics.get('loss', math.nan):.3f}"
        self.work_done += self.step_cost * (step - self.last_step)
        self.last_step = step
        self._show(force=False)

    def finish(self, runs: Sequence[RunConfig], steps_left: int = 0, status: str = "done") -> None:
        """The runs finished (``status``: "done", "diverged", "failed"); ``steps_left`` were not trained."""
        self.done += len(runs)
        self._shrink(self.step_cost * steps_left)
        self.step_info = f" {status}"
        self._show(force=True)
        self.label, self.step_info = None, ""

    def _shrink(self, work: float) -> None:
        self.work_total -= work
        if self.bar is not None:
            self.bar.total = self.work_total

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
