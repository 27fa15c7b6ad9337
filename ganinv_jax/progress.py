"""One progress reporter for long jobs (the trainer's steps, the invert job's images).

  p = Progress(total=1000, done=start_step, unit="steps")
  p.advance(n)
  logging.info("train: %s", p.line())   # '300/1000 steps (30.0%) | 2.31 steps/s | ETA 00:05:03'

The rate is over this session (resumed work is not counted as fast progress), the ETA is
(total - done) / rate and reads right past 24 hours ('2d 03:04:05').

Why not clu's `periodic_actions.ReportProgress`: it counts steps that must advance by one per
call (the invert job advances a chunk of images at a time), its rate is the estimate since the
previous report rather than over the session, its first call never reports (a resumed run shows
nothing until the second report), and it publishes through work-unit notes; its ETA format is
private (`_format_secs`) and drops the seconds.
"""

from __future__ import annotations

import math
import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """Seconds -> 'HH:MM:SS', with a day count past 24 hours ('2d 03:04:05'); '?' when unknown
    (inf, nan or negative). Whole seconds, rounded down."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    hms = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hms}" if days else hms


class Progress:
    """done/total in `unit`s, the rate over this session and the ETA."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        unit: str = "steps",
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.total, self.done, self.start_done = int(total), int(done), int(done)
        self.unit = unit
        self._clock = clock
        self.t0 = clock()

    def advance(self, n: int = 1) -> None:
        self.done += int(n)

    def rate(self) -> float:
        """Units per second over this session (0.0 before any progress)."""
        return (self.done - self.start_done) / max(self._clock() - self.t0, 1e-9)

    def eta(self, rate: float | None = None) -> float:
        """Seconds left at this session's rate; inf while the rate is unknown."""
        rate = self.rate() if rate is None else rate
        return max(self.total - self.done, 0) / rate if rate > 0 else math.inf

    def line(self) -> str:
        """'48/160 images (30.0%) | 2.31 images/s | ETA 00:00:48'."""
        rate = self.rate()
        pct = f" ({100.0 * self.done / self.total:.1f}%)" if self.total > 0 else ""
        return (
            f"{self.done}/{self.total} {self.unit}{pct} | {rate:.2f} {self.unit}/s"
            f" | ETA {format_duration(self.eta(rate))}"
        )
