"""The last step of a run (or of a skipped tick): its outcome into the job's history.

Every run's outcome passes here exactly once: the job's counters and last
run, the metrics, and one :class:`RunFinished` for the listeners.
"""

from __future__ import annotations

from datetime import UTC, datetime

from podcron.context import Trigger
from podcron.engine.events import Listeners, RunFinished
from podcron.engine.jobs import JobState
from podcron.runrecord import RunStatus
from podcron.telemetry.metrics import JobMetrics


def record_outcome(
    job: JobState,
    trigger: Trigger,
    scheduled_time: datetime,
    status: RunStatus,
    started: float | None,
    error: str | None,
    *,
    now: float,
    metrics: JobMetrics | None,
    listeners: Listeners,
) -> None:
    """Record a run that started at ``started`` (None: a skipped tick) and ended ``now``."""
    duration = 0.0
    job.history = None
    if started is None:
        # A skipped tick is not a run: the last run's outcome stays what status shows.
        job.skipped += 1
    else:
        job.last_status = status
        duration = now - started
        job.last_run_time = datetime.fromtimestamp(started, UTC)
        job.last_duration_seconds = duration
        job.total += 1
        if status is RunStatus.SUCCESS:
            job.succeeded += 1
        else:
            job.failed += 1
            job.last_error = error
    spec = job.spec
    if metrics is not None:
        metrics.run_recorded(
            spec.namespace,
            spec.name,
            trigger=trigger,
            status=status,
            duration_seconds=None if started is None else duration,
            ended_at=now,
        )
    listeners.emit(
        RunFinished(
            job_id=spec.job_id,
            namespace=spec.namespace,
            name=spec.name,
            trigger=trigger,
            scheduled_time=scheduled_time,
            status=status,
            duration_seconds=duration,
            error=error,
        )
    )
