"""What the engine tells its listeners: a run started or finished, a thread outlived its run.

The events are named tuples, not frozen dataclasses: two are made for every
run, and a frozen dataclass sets each field through ``object.__setattr__``,
which cost about 300 instructions a field (docs/performance.md). They are
as immutable, and listeners read them by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import NamedTuple

from podcron.context import Trigger
from podcron.runrecord import RunStatus

log = logging.getLogger("podcron.engine")

#: A thread still running this long after its run's outcome is abandoned: it no
#: longer takes one of ``worker_threads``, and a Warning is raised. Long enough
#: for a job that polls ``ctx.cancelled`` to notice and return.
ABANDON_AFTER_SECONDS = 1.0


class RunStarted(NamedTuple):
    """A run's body began; ``lateness_seconds`` is the body's start minus the due time."""

    job_id: str
    namespace: str
    name: str
    trigger: Trigger
    scheduled_time: datetime
    lateness_seconds: float


class RunFinished(NamedTuple):
    """A run's outcome, or a tick that did not run (``status`` SKIPPED, no RunStarted before it).

    ``duration_seconds`` is the body's own time, from its start to the outcome.
    """

    job_id: str
    namespace: str
    name: str
    trigger: Trigger
    scheduled_time: datetime
    status: RunStatus
    duration_seconds: float
    error: str | None


class ThreadAbandoned(NamedTuple):
    """A plain ``def`` run's thread still runs :data:`ABANDON_AFTER_SECONDS` after its outcome.

    ``error`` is the outcome recorded (the timeout, Replaced, ...). The job
    stays active until the thread returns; ``abandoned_threads`` counts such
    threads over all jobs, this one included.
    """

    job_id: str
    namespace: str
    name: str
    scheduled_time: datetime
    error: str | None
    abandoned_threads: int


class ThreadReturned(NamedTuple):
    """The thread of a run whose outcome was already recorded has returned: the job is free."""

    job_id: str
    namespace: str
    name: str
    scheduled_time: datetime
    seconds_after_outcome: float


JobEvent = RunStarted | RunFinished | ThreadAbandoned | ThreadReturned
Listener = Callable[[JobEvent], None]


class Listeners:
    """Everyone told of each :data:`JobEvent`; one failing listener does not stop the others."""

    __slots__ = ("_listeners",)

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners = list(listeners)

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: JobEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a listener failed on %s", type(event).__name__)
