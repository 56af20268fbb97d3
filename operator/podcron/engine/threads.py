"""Threads that outlive their run: a plain ``def`` body cannot be stopped.

A run's outcome is recorded at its deadline (or when it is replaced, deleted,
interrupted) even while its thread runs on; the job stays active until the
thread returns. One still running :data:`ABANDON_AFTER_SECONDS` after the
outcome is *abandoned*: it no longer takes one of the worker threads, and the
listeners hear of it (:class:`ThreadAbandoned`, then :class:`ThreadReturned`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Callable

from podcron.engine.budgets import RunBudgets
from podcron.engine.clock import Clock
from podcron.engine.events import (
    ABANDON_AFTER_SECONDS,
    Listeners,
    ThreadAbandoned,
    ThreadReturned,
)
from podcron.engine.jobs import JobState
from podcron.engine.runs import ActiveRun
from podcron.telemetry.metrics import JobMetrics

log = logging.getLogger("podcron.engine")

#: Called once a run's body has returned, to release what it held.
EndRun = Callable[[JobState, int, ActiveRun], None]


class OutlivedThreads:
    """Watches the threads of recorded runs until they return. Loop thread only."""

    def __init__(
        self,
        *,
        budgets: RunBudgets,
        clock: Clock,
        metrics: JobMetrics | None,
        listeners: Listeners,
    ) -> None:
        self._budgets = budgets
        self._clock = clock
        self._metrics = metrics
        self._listeners = listeners

    def watch(
        self, job: JobState, run_id: int, run: ActiveRun, *, end: EndRun, closing: bool
    ) -> None:
        """The run has its outcome but its thread runs on: ``end`` it when the thread returns.

        Only the thread's done callback holds ``end``, so the engine and this
        object form no reference cycle that outlives the thread.
        """
        loop = asyncio.get_running_loop()
        run.recorded_at = self._clock.wall()
        assert run.thread is not None
        run.thread.add_done_callback(
            functools.partial(
                _on_loop, loop, functools.partial(self._returned, job, run_id, run, end)
            )
        )
        if not closing and not run.ended:
            run.abandon_timer = loop.call_later(ABANDON_AFTER_SECONDS, self._abandon, job, run)

    def _abandon(self, job: JobState, run: ActiveRun) -> None:
        """The thread has not returned well after its run's outcome: stop counting on it."""
        run.abandon_timer = None
        if run.ended:
            return
        budgets = self._budgets
        budgets.abandon(run)
        if self._metrics is not None:
            self._metrics.abandoned_threads(budgets.abandoned)
        spec = run.spec
        log.warning(
            "job %s: the thread of its run due %s still runs %.0fs after the run ended (%s);"
            " the job counts as running until it returns (%d abandoned threads)",
            spec.job_id,
            run.scheduled_time.isoformat(),
            self._clock.wall() - run.recorded_at,
            run.cancel_reason or "its task was cancelled",
            budgets.abandoned,
            extra={"job_id": spec.job_id},
        )
        if not job.removed:
            self._listeners.emit(
                ThreadAbandoned(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    scheduled_time=run.scheduled_time,
                    error=run.cancel_reason,
                    abandoned_threads=budgets.abandoned,
                )
            )

    def _returned(self, job: JobState, run_id: int, run: ActiveRun, end: EndRun) -> None:
        if run.abandon_timer is not None:
            run.abandon_timer.cancel()
            run.abandon_timer = None
        if run.abandoned:
            self._budgets.returned(run)
            if self._metrics is not None:
                self._metrics.abandoned_threads(self._budgets.abandoned)
        late = self._clock.wall() - run.recorded_at
        spec = run.spec
        log.log(
            logging.WARNING if run.abandoned else logging.INFO,
            "job %s: the thread of its run due %s returned %.1fs after the run ended",
            spec.job_id,
            run.scheduled_time.isoformat(),
            late,
            extra={"job_id": spec.job_id},
        )
        end(job, run_id, run)
        if not job.removed:
            self._listeners.emit(
                ThreadReturned(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    scheduled_time=run.scheduled_time,
                    seconds_after_outcome=late,
                )
            )


def _on_loop(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[], None],
    _: concurrent.futures.Future[None],
) -> None:
    """A thread's done callback: call ``callback`` on ``loop``'s thread, unless it is closed."""
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for it any more
        loop.call_soon_threadsafe(callback)
