"""The engine's shutdown of its active runs: cancellation, a bounded wait, Interrupted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from podcron.context import Trigger
from podcron.engine.jobs import JobState
from podcron.engine.runs import ActiveRun
from podcron.runrecord import RunStatus

log = logging.getLogger("podcron.engine")

INTERRUPTED = "Interrupted: the operator shut down before the run finished"
NOT_STARTED = "Interrupted: the operator shut down before the run started"
# Cancelled runs normally record their outcome at once; they get this long
# before the engine records those that ignore cancellation itself.
CANCELLED_GRACE_SECONDS = 1.0

Cancel = Callable[[ActiveRun, str], None]
Record = Callable[[JobState, Trigger, datetime, RunStatus, float | None, str | None], None]


async def shut_down(
    jobs: Iterable[JobState], *, wait_seconds: float, cancel: Cancel, record: Record
) -> None:
    """Signal every active run to stop, wait up to ``wait_seconds``, then interrupt the rest.

    Queued runs never start; runs made ready ahead of their instant start at it, told
    to stop like the running ones. Runs still active after ``wait_seconds`` are cancelled
    and recorded as failures (Interrupted). Runs whose outcome is recorded
    already (a thread that outlived its run) are not waited for.
    """
    runs = [(job, run_id, run) for job in jobs for run_id, run in job.active.items()]
    for _, _, run in runs:
        # A run made ready ahead of its instant starts at it, as decided (docs/engine.md).
        if run.started is None and run.instant is None:
            cancel(run, NOT_STARTED)
        else:
            run.cancellation.set()
    tasks = {run.task for _, _, run in runs if run.task is not None and not run.task.done()}
    if not tasks:
        return
    log.info("waiting up to %ss for %d active runs", wait_seconds, len(tasks))
    _, pending = await asyncio.wait(tasks, timeout=wait_seconds)
    for _, _, run in runs:
        if run.task in pending:
            cancel(run, INTERRUPTED)
    if pending:
        await asyncio.wait(pending, timeout=CANCELLED_GRACE_SECONDS)
    for job, run_id, run in runs:
        if not run.recorded:
            run.recorded = True
            job.active.pop(run_id, None)
            record(
                job,
                run.trigger,
                run.scheduled_time,
                RunStatus.FAILURE if run.started is not None else RunStatus.SKIPPED,
                run.started,
                INTERRUPTED,
            )
