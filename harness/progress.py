"""Progress lines for long work.

A 70,000-node cell runs for many minutes. Backends report what they are doing through
``AttributeSettings.progress`` (a callable taking one short line, e.g. ``"feature rows 12,288/70,000"``) as
often as they like; a :class:`ProgressLine` keeps the latest line and prints it, with the elapsed time, at
most once per interval. Its :meth:`ProgressLine.tick` prints even when nothing new was reported, so a job
that is silent for a long time (a workload build, circuit-tracer's packaging) still shows it is alive.

The interval is ``$ATTRBENCH_PROGRESS_INTERVAL`` seconds (default 30); ``0`` turns progress lines off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrbench.formatting import fmt_seconds
from attrbench.guard import PROGRESS_ENV, progress_interval_s

__all__ = ["PROGRESS_ENV", "DEFAULT_INTERVAL_S", "ProgressLine", "no_progress", "progress_interval"]
DEFAULT_INTERVAL_S = 30.0


def progress_interval() -> float:
    """Seconds between progress lines: ``$ATTRBENCH_PROGRESS_INTERVAL`` or 30; 0 means none.

    A value that is not a finite number in [0, 86400] is a UsageError naming the variable
    (:func:`attrbench.guard.progress_interval_s`).
    """
    return progress_interval_s()


def no_progress(text: str) -> None:
    """The progress callback that reports nowhere (the default of ``AttributeSettings.progress``)."""


class ProgressLine:
    """The latest status of one long job, printed through ``say`` at most every ``interval_s`` seconds."""

    def __init__(
        self,
        say: Callable[[str], None],
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        first: str = "starting",
    ):
        self.say = say
        self.interval_s = progress_interval() if interval_s is None else interval_s
        self.clock = clock
        self.start = self.last_print = clock()
        self.text = first

    def update(self, text: str) -> None:
        """Record the job's current status; print it if the interval has passed."""
        self.text = text
        self.tick()

    def tick(self) -> None:
        """Print the latest status (``"2m05.0s: feature rows 12,288/70,000"``) if the interval has passed."""
        if self.interval_s <= 0:
            return
        now = self.clock()
        if now - self.last_print >= self.interval_s:
            self.last_print = now
            self.say(f"{fmt_seconds(now - self.start)}: {self.text}")

    def seconds_to_next(self) -> float | None:
        """How long until the next line is due (None when progress lines are off)."""
        if self.interval_s <= 0:
            return None
        return max(0.0, self.last_print + self.interval_s - self.clock())
