"""A registered job between runs: its spec, its history, its active runs."""

from __future__ import annotations

import collections
import inspect
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from podcron.context import Trigger
from podcron.engine.runs import ActiveRun, Prepared
from podcron.engine.spec import ConcurrencyPolicy, JobSpec
from podcron.entrypoints import JobTarget
from podcron.runrecord import FailedRun, History, PastRun, RunCounts, RunStatus

#: A past run as its job keeps it: :class:`PastRun`'s fields, with the trigger and the
#: status as their plain string values. An enum member is an object the garbage collector
#: tracks, and so is every tuple holding one, for as long as it is kept: 20 past runs of
#: 50,000 jobs made every full collection scan a million tuples more. A tuple of strings,
#: numbers and a datetime is untracked at its first collection.
KeptRun = tuple[str, datetime, float | None, float, str, str | None, int]


def past_run(kept: KeptRun) -> PastRun:
    """The :class:`PastRun` a kept run stands for (its trigger and status enum members again)."""
    trigger, scheduled_time, started, ended, status, error, trace_id = kept
    return PastRun(
        Trigger(trigger), scheduled_time, started, ended, RunStatus(status), error, trace_id
    )


def is_async(target: JobTarget) -> bool:
    """Whether the job's body is a coroutine function (else it runs in a thread)."""
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


@dataclass(slots=True, eq=False)
class JobState:
    """A registered job: its spec, its history, its next due time and its active runs.

    Each run updates the plain fields of its history below; the
    :class:`History` that snapshots hand out is built from them only when one
    is asked for (:meth:`history`), and kept until the next run, so that a
    run whose outcome nobody reads builds none.
    """

    spec: JobSpec
    is_async: bool
    # The last runs, newest last; None when the run history is off (a limit of 0).
    past_runs: collections.deque[KeptRun] | None
    # The wall-clock time of its next tick, None when it has none.
    next_due: float | None = None
    # The last tick the timer took of it (started, made ready ahead of it, held or given
    # away): a change re-arms the job after it, never at it again.
    taken: float = -math.inf
    # That tick's span and logger, made once the burst its last run started in was over.
    prepared: Prepared | None = None
    active: dict[int, ActiveRun] = field(default_factory=dict)
    removed: bool = False
    # The history, as plain fields: see History for what each means.
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    # When the last run started (wall clock), None if it never ran.
    last_started: float | None = None
    last_status: RunStatus | None = None
    last_duration_seconds: float | None = None
    last_error: str | None = None
    recent_failures: tuple[FailedRun, ...] = ()
    # The History last handed out; a run clears it. It starts as the one restored from status.
    built_history: History | None = None

    @classmethod
    def restored(
        cls, spec: JobSpec, history: History | None, *, run_history_limit: int
    ) -> JobState:
        """A new job, its counters and last run continued from ``history`` (from status)."""
        job = cls(
            spec=spec,
            is_async=is_async(spec.target),
            past_runs=collections.deque(maxlen=run_history_limit) if run_history_limit else None,
        )
        if history is not None:
            job.continue_from(history)
        return job

    def continue_from(self, history: History) -> None:
        """Take the counters and the last run from ``history`` (what status holds)."""
        counts = history.counts
        self.total, self.succeeded = counts.total, counts.succeeded
        self.failed, self.skipped = counts.failed, counts.skipped
        self.take_last_run(history)
        self.built_history = history

    def add_counts(self, more: RunCounts) -> None:
        """Count runs somebody else counted (another replica, as the job moved)."""
        self.total += more.total
        self.succeeded += more.succeeded
        self.failed += more.failed
        self.skipped += more.skipped
        self.built_history = None

    def counts(self) -> RunCounts:
        """The counters as they are now."""
        return RunCounts(
            total=self.total, succeeded=self.succeeded, failed=self.failed, skipped=self.skipped
        )

    def take_last_run(self, history: History) -> None:
        """Take the last run (and the recent failures) from ``history``."""
        started = history.last_run_time
        self.last_started = None if started is None else started.timestamp()
        self.last_status = history.last_status
        self.last_duration_seconds = history.last_duration_seconds
        self.last_error = history.last_error
        self.recent_failures = history.recent_failures
        self.built_history = None

    def history(self) -> History:
        """The job's history now; the same object until the next run changes it."""
        history = self.built_history
        if history is None:
            started = self.last_started
            history = self.built_history = History(
                last_run_time=None if started is None else datetime.fromtimestamp(started, UTC),
                last_status=self.last_status,
                last_duration_seconds=self.last_duration_seconds,
                last_error=self.last_error,
                counts=self.counts(),
                recent_failures=self.recent_failures,
            )
        return history


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
