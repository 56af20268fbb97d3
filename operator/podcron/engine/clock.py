"""The engine's wall clock, injectable so that tests can run it on a fake loop clock.

Schedules are about wall time, so due times are wall-clock seconds; the
engine's timers run on the event loop's own (monotonic) clock. Everything the
engine reads of the time goes through a :class:`Clock` and the running loop,
never ``time.time()`` directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


class OffsetClock:
    """Another clock's time (the API server's), read off this process's monotonic clock.

    Until :meth:`set_offset` is called it is the system's wall clock (``wall``
    is ``time.time`` itself, as :class:`SystemClock`'s is). Then it reads
    ``time.monotonic() + offset``: a step of the node's wall clock (NTP, or an
    operator's ``date -s``) cannot reach the engine before the offset follows,
    because the engine never reads the wall clock again.
    """

    __slots__ = ("offset", "wall")

    def __init__(self) -> None:
        #: The other clock minus this process's monotonic clock; None until set.
        self.offset: float | None = None
        self.wall: Callable[[], float] = time.time

    def set_offset(self, offset: float) -> None:
        """From now on ``wall()`` reads the monotonic clock plus ``offset`` seconds."""
        self.offset = offset
        monotonic = time.monotonic
        self.wall = lambda: monotonic() + offset
