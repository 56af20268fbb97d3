"""The engine's wall clock, injectable so that tests can run it on a fake loop clock.

Schedules are about wall time, so due times are wall-clock seconds; the
engine's timers run on the event loop's own (monotonic) clock. Everything the
engine reads of the time goes through a :class:`Clock` and the running loop,
never ``time.time()`` directly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where the engine reads the wall-clock time from."""

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    """The system's wall clock."""

    __slots__ = ()

    # time.time itself, not a method calling it: the engine reads the clock
    # three times a run, and each Python frame would cost as much as the read.
    wall = staticmethod(time.time)


SYSTEM_CLOCK: Clock = SystemClock()
