"""A registered job between runs: its spec, its flattened history, its active runs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from datetime import datetime

from podcron.engine.runs import ActiveRun, ActiveRuns
from podcron.engine.spec import ConcurrencyPolicy, JobSpec
from podcron.entrypoints import JobTarget
from podcron.runrecord import History, RunCounts, RunStatus


def is_async(target: JobTarget) -> bool:
    """Whether the job's body is a coroutine function (else it runs in a thread)."""
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


@dataclass(slots=True, eq=False)
class JobState:
    """A registered job: its spec, its history, its next due time and its active runs."""

    spec: JobSpec
    is_async: bool
    # Runs update the plain fields below rather than replace an immutable
    # History, so that a run leaves no new object behind: such survivors made
    # the garbage collector's full passes (which scan every live object, over
    # 100 ms at 50,000 jobs) run every few seconds. ``history`` caches the
    # History last handed out; a run clears it.
    history: History | None
    last_run_time: datetime | None = field(init=False)
    last_status: RunStatus | None = field(init=False)
    last_duration_seconds: float | None = field(init=False)
    last_error: str | None = field(init=False)
    total: int = field(init=False)
    succeeded: int = field(init=False)
    failed: int = field(init=False)
    skipped: int = field(init=False)
    # The wall-clock time of its next tick, None when it has none.
    next_due: float | None = None
    active: dict[int, ActiveRun] = field(default_factory=ActiveRuns)
    removed: bool = False

    def __post_init__(self) -> None:
        history = self.history or History()
        self.last_run_time = history.last_run_time
        self.last_status = history.last_status
        self.last_duration_seconds = history.last_duration_seconds
        self.last_error = history.last_error
        counts = history.counts
        self.total, self.succeeded = counts.total, counts.succeeded
        self.failed, self.skipped = counts.failed, counts.skipped

    def current_history(self) -> History:
        """The job's history as an immutable record, built once per change."""
        if self.history is None:
            self.history = History(
                last_run_time=self.last_run_time,
                last_status=self.last_status,
                last_duration_seconds=self.last_duration_seconds,
                last_error=self.last_error,
                counts=RunCounts(
                    total=self.total,
                    succeeded=self.succeeded,
                    failed=self.failed,
                    skipped=self.skipped,
                ),
            )
        return self.history


def why_busy(job: JobState, *, manual: bool, threads_per_job: int) -> str | None:
    """Why a job with active runs may not start another now, or None when it may."""
    policy = job.spec.concurrency_policy
    if policy is ConcurrencyPolicy.FORBID:
        return "concurrencyPolicy Forbid"
    if policy is ConcurrencyPolicy.REPLACE:
        if any(run.cancel_reason is not None for run in job.active.values()):
            return "the run it would replace has not stopped yet (concurrencyPolicy Replace)"
        return None
    if not job.is_async and len(job.active) >= threads_per_job:
        return f"its {len(job.active)} runs hold the threads one job may use (threadsPerJob)"
    # One queued tick per job is enough: more would pile up without bound
    # while the run slots are all taken. (Manual runs have their own budget.)
    if not manual and any(run.started is None for run in job.active.values()):
        return "a run of it still waits for a run slot (concurrencyPolicy Allow)"
    return None
