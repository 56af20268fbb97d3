"""Runs due at one instant all start before any of them is recorded, or told as started.

The engine starts at most ``DISPATCH_BATCH`` runs per timer callback; when more
are due at once, it starts them over several callbacks, one after the other.
A run whose body returned in between was recorded there (its span ended and
handed to the exporter, its outcome put into the job's history, the metrics
and the listeners): work that does not have to happen before the next run
starts, yet delayed it, so that the last run of a burst waited for the
outcomes of all the others. While a burst is being started, a run whose body
has returned ends at once (its run slot goes back) and its recording is put
off until the burst is over, keeping the time its body returned. The
recordings put off run in one loop callback, after the burst's last runs have
started: no task waits, nothing is awaited.

The same holds for what a run does as its body starts that the body does not
wait for: its timeout's timer pushed onto the loop's heap, its ``RunStarted``
to the listeners (the operator's status writer among them) and its lateness
exemplar. Those are put off too (:meth:`Burst.put_off_start`), and done first
when the burst is over, so that every run is told as started before any
outcome put off with it.

The garbage collector waits too. Starting a run makes a dozen objects the
collector tracks (its task, coroutine, context, span), so a thousand runs due
together set off fifteen young collections and a full one every few seconds:
3 to 15 ms of each such burst on this project's benchmark machine, with the
loop standing still. Nearly all of what they scan is alive until the burst is
over, so scanning it then frees no less. While a burst is being started the
collector is off (unless the process had turned it off itself), and back on
as its recordings begin, where the first allocation makes up for the
collections skipped; reference counting frees meanwhile what it always does.
A burst of one batch or less never turns it off.

A burst that does not end (more due every time the loop gets there: the engine
is behind) has its recordings done every ``HELD_BATCHES_AT_MOST`` batches, so
that outcomes are never held back for long, and the collector runs there.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("podcron.engine")

#: How many batches in a row may start while recordings wait (32 runs a batch: 1,024 runs).
HELD_BATCHES_AT_MOST = 32

Entry = TypeVar("Entry")


Record = Callable[[Entry], None]


class Burst(Generic[Entry]):
    """Whether runs due now are still being started, and the recordings put off till then.

    What is put off is an entry (a tuple of values, a run's start or its outcome):
    one object a run, the fewest the garbage collector can see alive. ``record``
    does what one entry says; it is handed to each call rather than kept, so that
    the runner owning this and this holding the runner's method make no reference
    cycle.
    """

    __slots__ = ("_batches", "_flush", "_gc_paused", "_later", "_starts", "going")

    def __init__(self) -> None:
        self._batches = 0
        #: Runs that start or end now are put off (read-only outside: a plain attribute, read
        #: every run).
        self.going = False
        self._starts: list[Entry] = []
        self._later: list[Entry] = []
        self._flush: asyncio.Handle | None = None
        self._gc_paused = False

    def goes_on(self, record: Record[Entry]) -> None:
        """A batch started and more runs are due now: recordings wait, within the bound."""
        if self._batches >= HELD_BATCHES_AT_MOST:
            self._batches = 0
            self._after_these_runs(record)
        self._batches += 1
        self._going()

    def ahead(self) -> None:
        """Runs were made ready ahead of their instant: going on, not counted towards the bound.

        None of them can have ended, so none waits to be recorded; a flush now would only
        run the collector over them.
        """
        self._going()

    def _going(self) -> None:
        self.going = True
        # Turned back on only by whoever turned it off: a process (or another engine in
        # it) that had it off keeps it so.
        if not self._gc_paused and gc.isenabled():
            gc.disable()
            self._gc_paused = True

    def put_off_start(self, entry: Entry) -> None:
        """Do ``entry`` (a run's start) once the burst is over, before any recording."""
        assert self.going
        self._starts.append(entry)

    def put_off(self, entry: Entry) -> None:
        """Record ``entry`` once the burst is over (only while it :attr:`going`)."""
        assert self.going
        self._later.append(entry)

    def starts_now(self, record: Record[Entry]) -> None:
        """Do the starts put off now, the burst going on (a run recorded at once: after its own)."""
        starts, self._starts = self._starts, []
        _each(starts, record)

    def over(self, record: Record[Entry]) -> None:
        """The last batch of runs due now started: the burst ends once they have."""
        self._batches = 0
        if self.going:
            self._after_these_runs(record)

    def flush(self, record: Record[Entry]) -> None:
        """End the burst now and do every recording put off (the engine's shutdown does)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self.going = False
        if self._gc_paused:
            self._gc_paused = False
            gc.enable()
        self._batches = 0
        starts, later, self._starts, self._later = self._starts, self._later, [], []
        _each(starts, record)
        _each(later, record)

    def _after_these_runs(self, record: Record[Entry]) -> None:
        # The runs just started are in the loop's ready queue: a callback queued now
        # comes after them, and their recordings are put off too.
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._due, record)

    def _due(self, record: Record[Entry]) -> None:
        self._flush = None
        batches = self._batches  # a batch started since: the bound was reached, or a new burst
        self.flush(record)
        if batches:
            self._batches = batches
            self._going()


def _each(entries: list[Entry], record: Record[Entry]) -> None:
    for entry in entries:
        try:
            record(entry)
        except Exception:
            # One failed recording must not keep the others from theirs.
            log.exception("recording a run's start or outcome failed")
