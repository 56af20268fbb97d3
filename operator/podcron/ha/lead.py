"""How far ahead of its clock a replica's renewal sets its fire bound: Λ, or more while
its renewals come slowly.

A tick above the fire bound the last acknowledged renewal set is held until the
next renewal is acknowledged (docs/ha.md, rule 2). That next acknowledgement
comes a whole cycle after the renewal was sent: its own round trip, the list and
coordination after it, the wait for the period, the next round trip. On an idle
API server that is about R; on one loaded by 20,000 jobs' status writes a
renewal took up to 1.6 s, the cycle up to 3.5 s, and with Λ = 2 s every replica
held its ticks for about a second several times a minute. So a renewal leads
by Λ while the cycles keep well within it, and by
:attr:`~podcron.ha.protocol.Params.fire_ahead_at_most` (2Λ, at most halfway
to L) once one of the latest came within half a period of Λ. Not by the longest
cycle seen plus a margin: under load they came in bursts, each longer than any
of the 30 before it by about a second (at 20,000 jobs on four replicas, from
start to end: 6-12 holds a replica so, 19-24 with Λ alone, 4-8 with these two
levels; docs/performance.md). A crash's uncertain window (ticks counted, not run
again) is as wide as the lead of the last renewal: wider only while the API
server is slow.

Pure: the agent passes in its monotonic readings.
"""

from __future__ import annotations

from podcron.ha.protocol import Params

#: How many quick cycles after a slow one the lead stays wide (at R = 1 s, about half a minute).
CYCLES_REMEMBERED = 30


class FireLead:
    """The lead of the next renewal, from when recent renewals were sent and acknowledged."""

    __slots__ = ("_params", "_quick", "_sent")

    def __init__(self, params: Params) -> None:
        self._params = params
        #: Quick cycles since the last slow one, up to CYCLES_REMEMBERED (none slow yet: that).
        self._quick = CYCLES_REMEMBERED
        #: When the last acknowledged renewal was sent; None after a renewal failed.
        self._sent: float | None = None

    def acknowledged(self, sent: float, now: float) -> None:
        """A renewal sent at ``sent`` was acknowledged at ``now``: the cycle since the one
        before was sent is one the lead must cover."""
        if self._sent is not None:
            params = self._params
            if now - self._sent + params.renew_period / 2 > params.fire_ahead:
                self._quick = 0
            else:
                self._quick = min(self._quick + 1, CYCLES_REMEMBERED)
        self._sent = sent

    def failed(self) -> None:
        """A renewal failed: the next cycle spans the outage, which no lead is meant to cover
        (the replica holds its ticks then by design), so it is not counted."""
        self._sent = None

    @property
    def seconds(self) -> float:
        if self._quick < CYCLES_REMEMBERED:
            return self._params.fire_ahead_at_most
        return self._params.fire_ahead
