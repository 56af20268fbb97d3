"""The API server's clock, estimated from the ``Date`` headers of the replies a replica gets.

Replicas start ticks by the cluster's time, not their node's: a node whose clock is
a minute behind would otherwise start its jobs' ticks a minute late (docs/ha.md,
"Time"). Every reply of the API server carries a ``Date`` header, the server's
clock when it answered, in whole seconds. A reply to a request sent at local time
``sent`` and received at ``received`` was stamped in between, so the offset
(server minus local) lies in ``[date - received, date + 1 - sent]``. The member
Lease's renewals give about one such interval a second; intersecting the recent
ones narrows the offset well below a second, as the sends' sub-second phases vary.

"Local" is this process's *monotonic* clock: the engine then reads the API
server's time as ``monotonic() + offset`` (:class:`~podcron.engine.clock.OffsetClock`),
and a step of the node's wall clock never reaches it.

Only the last :data:`WINDOW` samples count, so that a clock running at another
rate is followed. Intervals that do not meet mean a clock stepped (or drifted
beyond what the window allows): the older samples are dropped and the estimate
starts again from the newest one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

log = logging.getLogger("podcron.ha")

#: How many of the latest replies the estimate is made of (about as many seconds).
WINDOW = 30
#: The ``Date`` header's resolution, in seconds.
RESOLUTION = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One reply: monotonic times around the request, the server's ``Date``, and the node's
    wall clock when it was received (what the node's skew is told from)."""

    sent: float
    received: float
    date: float
    wall: float

    @property
    def low(self) -> float:
        """The smallest offset (server minus local) this reply allows."""
        return self.date - self.received

    @property
    def high(self) -> float:
        """The largest offset this reply allows."""
        return self.date + RESOLUTION - self.sent


def parse_date(header: str | None) -> float | None:
    """An HTTP ``Date`` header as seconds since the epoch; None when absent or malformed."""
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None


class OffsetEstimator:
    """The offset of the API server's clock from this process's, from recent replies."""

    __slots__ = ("_samples", "_window")

    def __init__(self, window: int = WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._window = window
        self._samples: deque[Sample] = deque(maxlen=window)

    def add(self, sample: Sample) -> float | None:
        """Takes one reply into account; returns the estimate (None: no sample makes sense).

        A sample received before it was sent (the local clock stepped back during the
        request) tells nothing and is ignored.
        """
        if sample.received < sample.sent:
            return self.offset
        low, high = self._bounds()
        if max(low, sample.low) > min(high, sample.high):
            self._samples.clear()
        self._samples.append(sample)
        return self.offset

    def _bounds(self) -> tuple[float, float]:
        low, high = -float("inf"), float("inf")
        for sample in self._samples:
            low = max(low, sample.low)
            high = min(high, sample.high)
        return low, high

    @property
    def offset(self) -> float | None:
        """Server minus local, in seconds: the middle of what the samples allow."""
        if not self._samples:
            return None
        low, high = self._bounds()
        return (low + high) / 2

    @property
    def uncertainty(self) -> float | None:
        """Half the width of what the samples allow: how far the estimate may be off."""
        if not self._samples:
            return None
        low, high = self._bounds()
        return (high - low) / 2


class SettableClock(Protocol):
    """What :class:`ServerTime` sets (the engine's :class:`~podcron.engine.clock.OffsetClock`)."""

    def set_offset(self, offset: float) -> None:
        """From now on the clock reads the monotonic clock plus ``offset`` seconds."""
        ...


#: The estimate must move this much before the clock follows it (and the engine re-arms).
MOVE_SECONDS = 0.25
#: Beyond this offset the replica warns: its node's clock needs fixing.
WARN_SECONDS = 1.0


class ServerTime:
    """Keeps an :class:`~podcron.engine.clock.OffsetClock` on the API server's time.

    Fed every reply's :class:`Sample`; sets the clock's offset at the first one
    and whenever the estimate moved by more than :data:`MOVE_SECONDS`, and then
    calls ``moved`` (the engine re-arms its timer by the corrected clock).
    ``gauge`` hears every estimate of the node's skew (server minus wall clock).
    """

    def __init__(
        self,
        clock: SettableClock,
        *,
        moved: Callable[[], None] | None = None,
        gauge: Callable[[float], None] | None = None,
        estimator: OffsetEstimator | None = None,
    ) -> None:
        self._clock = clock
        self.moved = moved
        self._gauge = gauge
        self._estimator = estimator or OffsetEstimator()
        self._applied: float | None = None
        self._warned = False

    def observe(self, sample: Sample) -> None:
        estimate = self._estimator.add(sample)
        if estimate is None:
            return
        # Server minus the node's wall clock: what an administrator can act on.
        skew = estimate + sample.received - sample.wall
        if self._gauge is not None:
            self._gauge(skew)
        self._warn(skew, self._estimator.uncertainty or 0.0)
        if self._applied is not None and abs(estimate - self._applied) <= MOVE_SECONDS:
            return
        self._applied = estimate
        self._clock.set_offset(estimate)
        if self.moved is not None:
            self.moved()

    def _warn(self, skew: float, uncertainty: float) -> None:
        # Only a skew beyond doubt: a first reply, slow under load, allows a wide interval.
        if not self._warned and abs(skew) - uncertainty > WARN_SECONDS:
            self._warned = True
            log.warning(
                "this node's clock is %+.1f s off the API server's; ticks follow the API "
                "server's clock, but the node's clock needs fixing (NTP)",
                -skew,
            )
        elif self._warned and abs(skew) <= WARN_SECONDS:
            self._warned = False
            log.info("this node's clock is back within %.0f s of the API server's", WARN_SECONDS)
