"""The last step of a run (or of a skipped tick): its outcome into the job's history.

Every run's outcome passes here exactly once: the job's counters and last
run, the metrics, and one :class:`RunFinished` for the listeners.
"""

from __future__ import annotations

from datetime import UTC, datetime

from podcron.context import Trigger
from podcron.engine.events import Listeners, RunFinished
from podcron.engine.jobs import JobState
from podcron.runrecord import History, RunCounts, RunStatus
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
    history = job.history
    counts = history.counts
    duration = 0.0
    if started is None:
        # A skipped tick is not a run: the last run's outcome stays what status shows.
        counts = RunCounts(
            total=counts.total,
            succeeded=counts.succeeded,
            failed=counts.failed,
            skipped=counts.skipped + 1,
        )
        job.history = History(
            last_run_time=history.last_run_time,
            last_status=history.last_status,
            last_duration_seconds=history.last_duration_seconds,
            last_error=history.last_error,
            counts=counts,
        )
    else:
        duration = now - started
        succeeded = status is RunStatus.SUCCESS
        job.history = History(
            last_run_time=datetime.fromtimestamp(started, UTC),
            last_status=status,
            last_duration_seconds=duration,
            last_error=history.last_error if succeeded else error,
            counts=RunCounts(
                total=counts.total + 1,
                succeeded=counts.succeeded + succeeded,
                failed=counts.failed + (not succeeded),
                skipped=counts.skipped,
            ),
        )
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
