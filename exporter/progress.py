"""Progress of a long phase (sensitivity analysis, importance scoring, an evaluation) told through a stage's
`progress` callback: a reporter that draws bars (the CLI on a terminal) gets `progress.tick(label, done, total)`;
any plain callable gets one line at most every INTERVAL_S seconds, so a log shows the phase is alive."""

from __future__ import annotations

import time
from typing import Any, Callable

INTERVAL_S = 10.0  # a CI log line every 10 s says the run is alive without flooding the log


class Ticker:
    """`update(done)` after each unit of work; the first line comes only once the phase has run INTERVAL_S."""

    def __init__(self, progress: Callable[[str], None], label: str, total: int, interval_s: float | None = None) -> None:
        self.progress, self.label, self.total = progress, label, total
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self.started = self.last = time.monotonic()
        self.tick = getattr(progress, "tick", None)
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        if self.tick is not None:
            self.tick(self.label, done, self.total)
            return
        now = time.monotonic()
        if now - self.last >= self.interval_s and done < self.total:
            self.last = now
            self.progress(status_line(self.label, done, self.total, now - self.started))


def status_line(label: str, done: int, total: int, elapsed_s: float) -> str:
    left = f", about {elapsed_s / done * (total - done):.0f}s left" if done else ""
    return f"{label}: {done}/{total} ({100 * done / max(total, 1):.0f}%, {elapsed_s:.0f}s{left})"


def ticker(progress: Any, label: str, total: int) -> Ticker:
    return Ticker(progress, label, total)
