"""The last step of a run (or of a skipped tick): its outcome into the job's history.

Every run's outcome passes here exactly once: the job's counters and last
run, its run history and recent failures, the metrics, and one
:class:`RunFinished` for the listeners. This is on every run's path, so the
job's fields are updated in place and nothing is built that nobody reads
(:meth:`podcron.engine.jobs.JobState.history`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from podcron.context import Trigger
from podcron.engine.changes import JobChanges
from podcron.engine.clock import Clock
from podcron.engine.events import Listeners, RunFinished
from podcron.engine.jobs import JobState
from podcron.jobconfig import ConfigSource
from podcron.runrecord import (
    RECENT_FAILURES,
    FailedRun,
    RunStatus,
    error_summary,
)
from podcron.telemetry.metrics import JobMetrics


class Recorder:
    """Records outcomes; ``config``'s Secret values are taken out of errors first."""

    __slots__ = ("_changes", "_clock", "_config", "_listeners", "_metrics")

    def __init__(
        self,
        *,
        clock: Clock,
        metrics: JobMetrics | None,
        listeners: Listeners,
        config: ConfigSource | None,
        changes: JobChanges,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._listeners = listeners
        self._config = config
        # Marked with every outcome recorded.
        self._changes = changes

    def record(
        self,
        job: JobState,
        trigger: Trigger,
        scheduled_time: datetime,
        status: RunStatus,
        started: float | None,
        error: str | None,
        trace_id: int = 0,
        *,
        ended: float | None = None,
    ) -> None:
        """Record a run that started at ``started`` (None: a skipped tick) and ended now.

        ``trace_id`` is the run's exported trace (0: none), its duration's exemplar.
        ``ended``: when the body returned, if not now. A job removed meanwhile records nothing.
        """
        if job.removed:
            return
        self._changes.mark(job.spec.job_id)
        now = self._clock.wall() if ended is None else ended
        summary = None
        if error is not None:
            if self._config is not None:
                # Status, Events and the System API show it: no Secret value in it.
                error = self._config.redact(error)
            summary = error_summary(error)
        job.built_history = None
        if started is None:
            # A skipped tick is not a run: the last run's outcome stays what status shows.
            duration = 0.0
            job.skipped += 1
        else:
            duration = now - started
            job.last_started = started
            job.last_status = status
            job.last_duration_seconds = duration
            job.total += 1
            if status is RunStatus.SUCCESS:
                job.succeeded += 1
            else:
                job.failed += 1
                job.last_error = error
                failure = FailedRun(
                    time=datetime.fromtimestamp(started, UTC),
                    trigger=trigger,
                    error=summary,
                    trace_id=trace_id,
                )
                job.recent_failures = (failure, *job.recent_failures[: RECENT_FAILURES - 1])
        if job.past_runs is not None:
            # Plain values, not the enum members: see KeptRun.
            job.past_runs.append(
                (trigger._value_, scheduled_time, started, now, status._value_, summary, trace_id)
            )
        spec = job.spec
        if self._metrics is not None:
            self._metrics.run_recorded(
                spec.namespace,
                spec.name,
                trigger=trigger,
                status=status,
                duration_seconds=None if started is None else duration,
                ended_at=now,
                trace_id=trace_id,
            )
        self._listeners.emit(
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
