"""A WARNING that anyone can provoke, logged at a bounded rate with a count of what was dropped.

Refused connections and denied requests are the caller's doing: a log line
for each would let any address fill the disk and slow the process. At most
``burst`` lines are written per ``interval``; the next line written after
some were dropped says how many.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

#: A few lines per window show the pattern; the count shows the volume.
BURST = 5
INTERVAL_SECONDS = 10.0


class RateLimitedLog:
    """``warning()`` on ``logger``, rate-limited; not thread-safe (one event loop calls it)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = BURST,
        interval: float = INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._window_start = -float("inf")
        self._written = 0
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """Lines dropped since the last one written."""
        return self._suppressed

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        """Log ``message % args`` at WARNING, unless this window's burst is spent."""
        now = self._clock()
        if now - self._window_start >= self._interval:
            self._window_start, self._written = now, 0
        if self._written >= self._burst:
            self._suppressed += 1
            return
        self._written += 1
        if self._suppressed:
            message += " (%d similar lines suppressed before this one)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.warning(message, *args, **kwargs)
