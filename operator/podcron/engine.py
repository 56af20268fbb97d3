"""The scheduling engine: asyncio timers, dispatch, overlap policies, timeouts, shutdown.

Pure asyncio: it knows nothing of Kubernetes or kopf. The operator registers
jobs with :meth:`Engine.upsert` and learns what happens through listeners.

One timer serves every job: a heap of due times with a single
``loop.call_at`` handle for the earliest one, so 10,000 jobs cost one timer
and zero jobs cost none. Due times are wall-clock (schedules are about wall
time) while asyncio timers run on the monotonic clock, so each wake-up
re-reads the wall clock: a clock stepped back re-arms instead of firing
early, and a clock stepped forward fires what became due instead of skipping it.

A run is *queued* from the moment it is accepted until its body starts (it
waits for a run slot, for a thread, or for the run it replaces to stop),
*running* while its body executes, and *active* (what the overlap policy and
``status.running`` see) until its body has returned. Its outcome is recorded
exactly once, when the body returns, fails or is cancelled, or at its
deadline. A plain ``def`` body cannot be stopped: a thread that outlives its
run's outcome keeps the job active until it returns. docs/engine.md explains
the model and its budgets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import functools
import heapq
import inspect
import itertools
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from podcron.context import Cancellation, JobContext, Trigger
from podcron.entrypoints import JobTarget
from podcron.errors import JobAlreadyRunning, JobNotFound, TooManyManualRuns
from podcron.jobconfig import NO_CONFIG, ConfigSource
from podcron.resources import (
    NO_RESOURCES,
    ResourceManager,
    ResourceUnavailable,
    RunResources,
    UnknownResource,
)
from podcron.schedules import Schedule
from podcron.telemetry import logs, tracing
from podcron.telemetry.metrics import JobMetrics
from podcron.watchdog import LoopWatchdog

log = logging.getLogger("podcron.engine")
job_log = logging.getLogger("podcron.job")

# Long timers are cut into slices of at most this length: the monotonic timer
# cannot notice a wall-clock step, so a daily job re-checks the wall clock
# once a minute rather than firing hours off after an NTP correction.
MAX_SLEEP_SECONDS = 60.0
# At most this many runs start per timer callback; the timer then fires again
# at once, after the runs just started. Hundreds of jobs can fall due together
# with tens of thousands registered: started all at once, their pending tasks
# set off the garbage collector, whose passes then promote them to its oldest
# generation and bring on full collections (over 100 ms each) every few
# seconds. Slices also let the loop's other callbacks in between.
DISPATCH_BATCH = 32
ERROR_TEXT_LIMIT = 1024
INTERRUPTED = "Interrupted: the operator shut down before the run finished"
NOT_STARTED = "Interrupted: the operator shut down before the run started"
#: A thread still running this long after its run's outcome is abandoned: it no
#: longer takes one of ``worker_threads``, and a Warning is raised. Long enough
#: for a job that polls ``ctx.cancelled`` to notice and return.
ABANDON_AFTER_SECONDS = 1.0
#: What a refused manual run's caller is told to wait (``Retry-After``).
MANUAL_RETRY_AFTER_SECONDS = 1
#: The engine names each run's task this plus the job id (the watchdog reads it back).
RUN_TASK_PREFIX = "podcron-run "
# Most jobs have no timeout; entering asyncio.timeout(None) still costs a
# timer-less Timeout object per run.
_NO_TIMEOUT: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


class ConcurrencyPolicy(enum.StrEnum):
    """What a tick does while a run of the same job is active."""

    FORBID = "Forbid"
    ALLOW = "Allow"
    REPLACE = "Replace"


class RunStatus(enum.StrEnum):
    """The outcome of one run, or of one tick that did not run."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """One job as the engine needs it: already validated and resolved."""

    job_id: str
    namespace: str
    name: str
    entry_point: str
    target: JobTarget
    schedule: Schedule
    args: Mapping[str, Any] = field(default_factory=dict)
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.FORBID
    suspended: bool = False
    timeout_seconds: float | None = None
    starting_deadline_seconds: float | None = None
    # The shared resources its runs get in ctx.resources (spec.resources).
    resources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCounts:
    """Run counters; ``total`` counts runs (succeeded + failed), not skipped ticks."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """What is known of a job's past runs; the operator restores it from status."""

    last_run_time: datetime | None = None
    last_status: RunStatus | None = None
    last_duration_seconds: float | None = None
    last_error: str | None = None
    counts: RunCounts = RunCounts()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSnapshot:
    """A job's state at one instant, safe to hand to other layers."""

    spec: JobSpec
    running: bool
    next_run_time: datetime | None
    history: History


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    """A run's body began; ``lateness_seconds`` is the body's start minus the due time."""

    job_id: str
    namespace: str
    name: str
    trigger: Trigger
    scheduled_time: datetime
    lateness_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadAbandoned:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadReturned:
    """The thread of a run whose outcome was already recorded has returned: the job is free."""

    job_id: str
    namespace: str
    name: str
    scheduled_time: datetime
    seconds_after_outcome: float


JobEvent = RunStarted | RunFinished | ThreadAbandoned | ThreadReturned
Listener = Callable[[JobEvent], None]


@dataclass(slots=True, eq=False)
class _ActiveRun:
    trigger: Trigger
    scheduled_time: datetime
    # The spec the run was accepted under: an update must not change a run midway.
    spec: JobSpec
    is_async: bool
    manual: bool
    # When the body started; None while queued.
    started: float | None = None
    cancellation: Cancellation = field(default_factory=Cancellation)
    task: asyncio.Task[None] | None = None
    # Why the engine cancelled it, recorded as the run's error.
    cancel_reason: str | None = None
    # Set once the outcome is recorded: at shutdown the engine records runs
    # that ignore cancellation itself, and their task must not record again.
    recorded: bool = False
    # When a run whose thread outlived it was recorded (for the abandonment log).
    recorded_at: float = 0.0
    # What it holds until its body has returned, released by Engine._end.
    holds_slot: bool = False
    holds_thread: bool = False
    # A plain def body's thread, and whether it outlived the run (abandoned).
    thread: concurrent.futures.Future[None] | None = None
    abandoned: bool = False
    abandon_timer: asyncio.TimerHandle | None = None
    ended: bool = False
    # Runs (of Replace) waiting for this one to end.
    successors: list[asyncio.Future[None]] | None = None


class _ActiveRuns(dict[int, _ActiveRun]):
    """A job's active runs by run id.

    A dict subclass because the garbage collector never untracks one: a plain
    dict would be untracked by each full collection while empty and tracked
    again by the job's next run, so every job re-entered the collector's
    oldest generation after every full collection, which set off the next
    one within seconds at tens of thousands of jobs.
    """

    __slots__ = ()


@dataclass(slots=True, eq=False)
class _Job:
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
    # Renewed from an engine-wide counter whenever the job is re-armed or
    # removed: heap entries carrying another generation are stale and skipped
    # (lazy deletion keeps removal O(1)), even for a job re-created under the same id.
    generation: int = -1
    next_due: float | None = None
    active: dict[int, _ActiveRun] = field(default_factory=_ActiveRuns)
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


def _is_async(target: JobTarget) -> bool:
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _error_text(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(error)).strip()
    return (
        text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 14] + "... (truncated)"
    )


def _failed(span: trace.Span, ctx: JobContext, failure: BaseException) -> str:
    """Record a job's exception on its span and in its log; return the status text."""
    error = _error_text(failure)
    tracing.record_failure(span, failure, description=error)
    ctx.log.error("run failed: %s", error, exc_info=failure)
    return error


def _deadline(started: float, timeout: float) -> datetime:
    """When a run that started at ``started`` times out; any positive timeout is accepted.

    One beyond what a datetime can hold (past the year 9999) is that far:
    the run is never cut short, and its context says 9999-12-31.
    """
    if not timeout > 0:  # also NaN
        raise ValueError(f"timeoutSeconds must be positive, got {timeout}")
    try:
        return _utc(started) + timedelta(seconds=timeout)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _timed_out(run: _ActiveRun, span: trace.Span, ctx: JobContext, timeout: TimeoutError) -> str:
    """Record a run's timeout on its span and in its log; return the status text."""
    seconds = run.spec.timeout_seconds
    error = run.cancel_reason = f"TimeoutError: run exceeded {seconds}s"
    run.cancellation.set()
    tracing.record_failure(span, timeout, description=error)
    ctx.log.error("run timed out after %ss", seconds, exc_info=timeout)
    return error


def _job_of_task(task: asyncio.Task[Any]) -> str | None:
    name = task.get_name()
    return name[len(RUN_TASK_PREFIX) :] if name.startswith(RUN_TASK_PREFIX) else None


class Engine:
    """Runs registered jobs on time. Every method must be called on the event loop's thread.

    Budgets, each bounding what one kind of caller can take from the others:

    * ``max_concurrent_runs``: scheduled and catch-up runs active at once;
      further ones queue for a slot.
    * ``max_manual_runs``: manual runs active at once, beside those slots, so
      that manual runs never delay scheduled ones; further manual runs are
      refused with :class:`TooManyManualRuns`.
    * ``worker_threads``: threads for the bodies of scheduled plain ``def``
      runs; further ones queue. A thread abandoned by its run is replaced, up
      to ``worker_threads`` replacements at once. Manual runs bring their own
      threads (one each, within ``max_manual_runs``).
    * ``threads_per_job``: active runs one plain ``def`` job may have under
      Allow; ticks beyond are skipped, manual runs refused.

    And under Allow, a tick is skipped while an earlier run of the same job
    still waits to start, so the queue holds at most one run per job.
    """

    def __init__(
        self,
        *,
        max_concurrent_runs: int = 100,
        max_manual_runs: int = 10,
        worker_threads: int = 8,
        threads_per_job: int = 2,
        shutdown_timeout_seconds: float = 25.0,
        listeners: Iterable[Listener] = (),
        metrics: JobMetrics | None = None,
        loop_watchdog: bool = True,
        resources: ResourceManager | None = None,
        config: ConfigSource | None = None,
    ) -> None:
        for name, value in (
            ("max_concurrent_runs", max_concurrent_runs),
            ("max_manual_runs", max_manual_runs),
            ("worker_threads", worker_threads),
            ("threads_per_job", threads_per_job),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._jobs: dict[str, _Job] = {}
        # (due, generation, job id): entries hold no reference to the job, so
        # the garbage collector untracks them rather than keep one more
        # long-lived object per run, which would make its full passes frequent.
        self._heap: list[tuple[float, int, str]] = []
        self._stale_entries = 0
        self._sequence = itertools.count()
        self._run_ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._slots = asyncio.Semaphore(max_concurrent_runs)
        self._max_manual_runs = max_manual_runs
        self._manual_runs = 0
        self._thread_slots = asyncio.Semaphore(worker_threads)
        self._threads_per_job = threads_per_job
        self._max_replacements = worker_threads
        self._replacements = 0
        self._abandoned = 0
        # Enough threads that a body admitted by the budgets above never waits
        # inside the pool: scheduled bodies, their replacements, manual bodies.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            2 * worker_threads + max_manual_runs, thread_name_prefix="podcron-job"
        )
        self._shutdown_timeout = shutdown_timeout_seconds
        self._listeners = list(listeners)
        self._metrics = metrics
        self._loop_watchdog = loop_watchdog
        self._watchdog: LoopWatchdog | None = None
        self._closing = False
        self._version = 0
        # What runs get beside their spec: ctx.resources and ctx.config. The
        # configuration's Secret values are also taken out of failed runs' errors.
        self._resources = resources
        self._config = config

    # -- registration -----------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every :data:`JobEvent`; it must be quick and not block."""
        self._listeners.append(listener)

    def upsert(self, spec: JobSpec, *, history: History | None = None) -> JobSnapshot:
        """Register a job, or replace the spec of a registered one, and arm it.

        A replaced job keeps its history and its active runs; only its timer
        is re-armed. For a newly registered job, ``history`` (restored from
        status) seeds the counters, and its ``last_run_time`` decides the one
        catch-up run ``starting_deadline_seconds`` allows.
        """
        if self._closing:
            raise RuntimeError("the engine is shutting down")
        if self._watchdog is None and self._loop_watchdog:
            # Started with the first job, on the loop it watches: no job, nothing to watch.
            metrics = self._metrics
            self._watchdog = LoopWatchdog(
                asyncio.get_running_loop(),
                holder=_job_of_task,
                on_lag=None if metrics is None else metrics.loop_lag,
            )
            self._watchdog.start()
        job = self._jobs.get(spec.job_id)
        is_new = job is None
        if job is None:
            job = _Job(spec=spec, is_async=_is_async(spec.target), history=history)
            self._jobs[spec.job_id] = job
            if self._metrics is not None:
                self._metrics.job_added(spec.namespace, spec.name)
        else:
            job.spec = spec
            job.is_async = _is_async(spec.target)
        now = time.time()
        self._arm(job, after=now)
        if is_new and history is not None:
            self._catch_up(job, history, now)
        self._set_timer()
        return self._snapshot(job)

    def remove(self, job_id: str) -> None:
        """Forget a job at once: no tick fires after this, and its active runs are cancelled."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        job.removed = True
        if self._metrics is not None:
            self._metrics.job_removed(job.spec.namespace, job.spec.name)
        self._disarm(job)
        for run in job.active.values():
            self._cancel(run, "Deleted: the ScheduledJob was deleted")

    def trigger(
        self, job_id: str, *, trace_headers: Mapping[str, str] | None = None
    ) -> JobSnapshot:
        """Run a job once now (trigger ``manual``), honouring its concurrency policy.

        Raises :class:`JobNotFound`, :class:`JobAlreadyRunning` when the job may
        not start another run now (Forbid, a replaced run that has not stopped,
        ``threads_per_job``), or :class:`TooManyManualRuns` when manual runs
        use their whole budget. A ``traceparent`` in ``trace_headers`` makes
        the run's span its child.
        """
        job = self._jobs.get(job_id)
        if job is None or self._closing:
            raise JobNotFound(job_id)
        parent = tracing.parent_from_headers(trace_headers or {})
        self._dispatch(job, Trigger.MANUAL, _utc(time.time()), parent=parent, manual=True)
        return self._snapshot(job)

    def snapshot(self, job_id: str) -> JobSnapshot:
        """The job's current state; raises :class:`JobNotFound`."""
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return self._snapshot(job)

    def snapshots(self) -> list[JobSnapshot]:
        """Every registered job's state, ordered by job id."""
        return [self._snapshot(self._jobs[job_id]) for job_id in sorted(self._jobs)]

    @property
    def version(self) -> int:
        """A counter that moves whenever any job's snapshot may have changed.

        Readers that derive something costly from :meth:`snapshots` (the
        control socket's serialised job list) rebuild only when it moved.
        """
        return self._version

    @property
    def job_count(self) -> int:
        """How many jobs are registered."""
        return len(self._jobs)

    @property
    def running_count(self) -> int:
        """How many runs are active now: queued, running, or waiting for their thread."""
        return sum(len(job.active) for job in self._jobs.values())

    @property
    def abandoned_threads(self) -> int:
        """How many threads outlive the run they belong to."""
        return self._abandoned

    def _snapshot(self, job: _Job) -> JobSnapshot:
        return JobSnapshot(
            spec=job.spec,
            running=bool(job.active),
            next_run_time=None if job.next_due is None else _utc(job.next_due),
            history=job.current_history(),
        )

    # -- timers -----------------------------------------------------------

    def _arm(self, job: _Job, *, after: float) -> None:
        self._disarm(job)
        if job.spec.suspended or self._closing:
            return
        following = job.spec.schedule.next_after(_utc(after))
        if following is None:  # no further run (a date that never comes, or past 9999)
            return
        due = following.timestamp()
        job.next_due = due
        heapq.heappush(self._heap, (due, job.generation, job.spec.job_id))
        if self._timer_due is not None and due < self._timer_due:
            self._cancel_timer()

    def _disarm(self, job: _Job) -> None:
        if job.next_due is not None:
            self._stale_entries += 1
            job.next_due = None
        job.generation = next(self._sequence)
        self._version += 1
        # Lazy deletion leaves stale entries behind; rebuild once they dominate
        # so a churn of updates cannot grow the heap without bound.
        if self._stale_entries > 1024 and self._stale_entries > len(self._heap) // 2:
            self._heap = [entry for entry in self._heap if self._armed(entry) is not None]
            heapq.heapify(self._heap)
            self._stale_entries = 0

    def _armed(self, entry: tuple[float, int, str]) -> _Job | None:
        """The job a heap entry arms, or None if the entry is stale."""
        job = self._jobs.get(entry[2])
        return job if job is not None and job.generation == entry[1] else None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_due = None

    def _set_timer(self) -> None:
        heap = self._heap
        while heap and self._armed(heap[0]) is None:
            heapq.heappop(heap)
            self._stale_entries -= 1
        if not heap or self._closing:
            self._cancel_timer()
            return
        due = heap[0][0]
        if self._timer is not None and self._timer_due == due:
            return
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        delay = min(due - time.time(), MAX_SLEEP_SECONDS)
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)
        self._timer_due = due

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        now = time.time()
        heap = self._heap
        budget = DISPATCH_BATCH
        while budget and heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            job = self._armed(entry)
            if job is None:
                self._stale_entries -= 1
                continue
            budget -= 1
            due = entry[0]
            job.next_due = None
            # Armed before dispatching so that listeners already see the next
            # run time. Ticks missed while the loop was blocked (or the clock
            # jumped) are coalesced into this one, not fired as a burst.
            self._arm(job, after=max(due, now))
            try:
                self._dispatch(job, Trigger.SCHEDULED, _utc(due), parent=None, manual=False)
            except Exception:  # a listener or a schedule bug must not stop the other jobs
                log.exception("dispatching job %s failed", job.spec.job_id)
        self._set_timer()

    # -- dispatch ---------------------------------------------------------

    def _catch_up(self, job: _Job, history: History, now: float) -> None:
        deadline = job.spec.starting_deadline_seconds
        if deadline is None or job.spec.suspended or history.last_run_time is None:
            return
        missed = job.spec.schedule.last_at_or_before(_utc(now))
        if missed is None or missed <= history.last_run_time:
            return
        if now - missed.timestamp() <= deadline:
            log.info("job %s catches up on its tick of %s", job.spec.job_id, missed.isoformat())
            self._dispatch(job, Trigger.CATCH_UP, missed, parent=None, manual=False)

    def _busy(self, job: _Job, *, manual: bool) -> str | None:
        """Why the job may not start another run now, or None; it has active runs."""
        policy = job.spec.concurrency_policy
        if policy is ConcurrencyPolicy.FORBID:
            return "concurrencyPolicy Forbid"
        if policy is ConcurrencyPolicy.REPLACE:
            if any(run.cancel_reason is not None for run in job.active.values()):
                return "the run it would replace has not stopped yet (concurrencyPolicy Replace)"
            return None
        if not job.is_async and len(job.active) >= self._threads_per_job:
            return f"its {len(job.active)} runs hold the threads one job may use (threadsPerJob)"
        # One queued tick per job is enough: more would pile up without bound
        # while the run slots are all taken. (Manual runs have their own budget.)
        if not manual and any(run.started is None for run in job.active.values()):
            return "a run of it still waits for a run slot (concurrencyPolicy Allow)"
        return None

    def _dispatch(
        self,
        job: _Job,
        trigger: Trigger,
        scheduled_time: datetime,
        *,
        parent: otel_context.Context | None,
        manual: bool,
    ) -> None:
        spec = job.spec
        replaced: list[_ActiveRun] | None = None
        if job.active:
            why = self._busy(job, manual=manual)
            if why is not None:
                if manual:
                    raise JobAlreadyRunning(spec.job_id, why)
                log.info(
                    "job %s skipped its %s tick: a run is active (%s)",
                    spec.job_id,
                    scheduled_time.isoformat(),
                    why,
                    extra={"job_id": spec.job_id},
                )
                self._record(job, trigger, scheduled_time, RunStatus.SKIPPED, None, None)
                return
            if spec.concurrency_policy is ConcurrencyPolicy.REPLACE:
                replaced = list(job.active.values())
        if manual:
            if self._manual_runs >= self._max_manual_runs:
                raise TooManyManualRuns(
                    f"{self._manual_runs} manual runs are active, as many as maxManualRuns"
                    f" allows; retry in {MANUAL_RETRY_AFTER_SECONDS}s",
                    retry_after_seconds=MANUAL_RETRY_AFTER_SECONDS,
                )
            self._manual_runs += 1
        if replaced is not None:
            for old in replaced:
                self._cancel(old, "Replaced: a newer run started (concurrencyPolicy Replace)")
        run = _ActiveRun(
            trigger=trigger,
            scheduled_time=scheduled_time,
            spec=spec,
            is_async=job.is_async,
            manual=manual,
        )
        run_id = next(self._run_ids)
        job.active[run_id] = run
        self._version += 1
        if self._metrics is not None:
            self._metrics.run_queued()
        run.task = asyncio.get_running_loop().create_task(
            self._run(job, run_id, run, parent, replaced), name=RUN_TASK_PREFIX + spec.job_id
        )

    def _cancel(self, run: _ActiveRun, reason: str) -> None:
        if run.cancel_reason is None:
            run.cancel_reason = reason
        run.cancellation.set()
        task = run.task
        if task is None:
            return
        # A task cancelled before its first step never runs its coroutine, so
        # the run would never record nor release anything: such a run sees
        # cancel_reason as it begins instead.
        coro = task.get_coro()
        if not inspect.iscoroutine(coro) or inspect.getcoroutinestate(coro) != "CORO_CREATED":
            task.cancel()

    async def _run(
        self,
        job: _Job,
        run_id: int,
        run: _ActiveRun,
        parent: otel_context.Context | None,
        replaced: list[_ActiveRun] | None,
    ) -> None:
        spec, trigger, scheduled_time = run.spec, run.trigger, run.scheduled_time
        # Not a success until the body has returned: anything that goes wrong
        # on the way (the deadline, telemetry, the context) fails the run.
        status, error, started = RunStatus.FAILURE, None, None
        try:
            if run.cancel_reason is not None:  # cancelled before its task began
                raise asyncio.CancelledError
            # Queued: waiting is lateness, never duration, and the timeout
            # clock has not started.
            if replaced:
                await self._until_ended(replaced)
            if not run.manual:
                await self._slots.acquire()
                run.holds_slot = True
                if not run.is_async:
                    await self._thread_slots.acquire()
                    run.holds_thread = True
            started = run.started = time.time()
            lateness = started - scheduled_time.timestamp()
            if self._metrics is not None:
                self._metrics.run_started(trigger, lateness)
            self._emit(
                RunStarted(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    trigger=trigger,
                    scheduled_time=scheduled_time,
                    lateness_seconds=lateness,
                )
            )
            timeout = spec.timeout_seconds
            deadline = None if timeout is None else _deadline(started, timeout)
            with tracing.start_run_span(
                job_id=spec.job_id,
                trigger=trigger.value,
                entry_point=spec.entry_point,
                scheduled_time=scheduled_time,
                parent=parent,
            ) as span:
                trace_context = trace.set_span_in_context(span, parent)
                # Resources created already are handed over at once; None: acquire below.
                resources = NO_RESOURCES if not spec.resources else self._ready(spec.resources)
                ctx = JobContext(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    trigger=trigger,
                    scheduled_time=scheduled_time,
                    args=spec.args,
                    log=logs.job_logger(job_log, job_id=spec.job_id, span=span),
                    deadline=deadline,
                    cancelled=run.cancellation,
                    trace_context=trace_context,
                    config=NO_CONFIG if self._config is None else self._config.snapshot(),
                    resources=NO_RESOURCES if resources is None else resources,
                )
                guard = None if timeout is None else asyncio.timeout(timeout)
                try:
                    async with guard or _NO_TIMEOUT:
                        if resources is None:
                            # Within the timeout and the span: waiting for a resource
                            # being created is part of the run.
                            ctx = dataclasses.replace(
                                ctx, resources=await self._acquire(spec.resources)
                            )
                        if run.is_async:
                            token = otel_context.attach(trace_context)
                            try:
                                await spec.target(ctx)
                            finally:
                                otel_context.detach(token)
                        else:
                            run.thread = self._pool.submit(_call_in_thread, spec.target, ctx)
                            await asyncio.wrap_future(run.thread)
                except TimeoutError as timeout_error:
                    if guard is not None and guard.expired():
                        error = _timed_out(run, span, ctx, timeout_error)
                    else:  # the job's own TimeoutError, not its deadline
                        error = _failed(span, ctx, timeout_error)
                except (ResourceUnavailable, UnknownResource) as unavailable:
                    # The job never ran and it is not its bug: one line, no traceback.
                    error = str(unavailable)
                    tracing.record_failure(span, unavailable, description=error)
                    ctx.log.error("run not started: %s", error)
                except asyncio.CancelledError as cancelled:
                    if run.cancel_reason is not None:
                        error = run.cancel_reason
                        tracing.record_failure(span, cancelled, description=error)
                        ctx.log.error("run cancelled: %s", error)
                    else:
                        # The job raised it itself, or awaited something that
                        # was cancelled: a failure like any other exception.
                        error = _failed(span, ctx, cancelled)
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # someone else cancels this task: let them see it
                except BaseException as failure:
                    error = _failed(span, ctx, failure)
                else:
                    if guard is not None and guard.expired():
                        # It swallowed the timeout's cancellation and returned late.
                        error = _timed_out(run, span, ctx, TimeoutError())
                    elif run.cancel_reason is None:
                        status = RunStatus.SUCCESS
                    else:  # cancelled by the engine, yet returned: still cut short
                        error = run.cancel_reason
                        tracing.record_failure(span, asyncio.CancelledError(), description=error)
        except asyncio.CancelledError:
            if started is None:
                error = run.cancel_reason or "cancelled before it started"
                log.info(
                    "job %s: the run due %s did not start: %s",
                    spec.job_id,
                    scheduled_time.isoformat(),
                    error,
                    extra={"job_id": spec.job_id},
                )
            if run.cancel_reason is None:
                raise
        except BaseException as failure:
            # Around the job's call: the context, the span, a listener.
            error = _error_text(failure)
            log.error(
                "run of job %s failed around its call: %s",
                spec.job_id,
                error,
                exc_info=failure,
                extra={"job_id": spec.job_id},
            )
        finally:
            thread = run.thread
            finished = thread is None or thread.done()
            if finished:
                self._end(job, run_id, run)
            if not run.recorded:
                run.recorded = True
                self._record(
                    job,
                    trigger,
                    scheduled_time,
                    RunStatus.SKIPPED if started is None else status,
                    started,
                    error,
                )
            if not finished:
                self._await_thread(job, run_id, run)

    def _ready(self, names: tuple[str, ...]) -> RunResources | None:
        return None if self._resources is None else self._resources.ready(names)

    async def _acquire(self, names: tuple[str, ...]) -> RunResources:
        if self._resources is None:
            raise UnknownResource(names[0], ())
        return await self._resources.acquire(names)

    async def _until_ended(self, runs: list[_ActiveRun]) -> None:
        """Return once every run in ``runs`` has ended (Replace: one body at a time)."""
        loop = asyncio.get_running_loop()
        for old in runs:
            if not old.ended:
                waiter = loop.create_future()
                if old.successors is None:
                    old.successors = []
                old.successors.append(waiter)
                await waiter

    def _end(self, job: _Job, run_id: int, run: _ActiveRun) -> None:
        """The run's body has returned (or never started): release what it held."""
        run.ended = True
        job.active.pop(run_id, None)
        self._version += 1
        if run.holds_slot:
            self._slots.release()
        if run.holds_thread:
            self._thread_slots.release()
        if run.manual:
            self._manual_runs -= 1
        if self._metrics is not None:
            if run.started is None:
                self._metrics.run_dropped()
            else:
                self._metrics.run_ended()
        if run.successors is not None:
            for waiter in run.successors:
                if not waiter.done():
                    waiter.set_result(None)

    def _await_thread(self, job: _Job, run_id: int, run: _ActiveRun) -> None:
        """The run has its outcome but its thread runs on: the job stays active until it returns."""
        loop = asyncio.get_running_loop()
        run.recorded_at = time.time()
        assert run.thread is not None
        run.thread.add_done_callback(
            functools.partial(
                _on_loop, loop, functools.partial(self._thread_returned, job, run_id, run)
            )
        )
        if not self._closing and not run.ended:
            run.abandon_timer = loop.call_later(ABANDON_AFTER_SECONDS, self._abandon, job, run)

    def _abandon(self, job: _Job, run: _ActiveRun) -> None:
        """The thread has not returned well after its run's outcome: stop counting on it."""
        run.abandon_timer = None
        if run.ended:
            return
        run.abandoned = True
        self._abandoned += 1
        # Its place among worker_threads goes to the others, within a bound:
        # a thread cannot be killed, and each abandoned one is one more thread.
        if run.holds_thread and self._replacements < self._max_replacements:
            run.holds_thread = False
            self._replacements += 1
            self._thread_slots.release()
        if self._metrics is not None:
            self._metrics.abandoned_threads(self._abandoned)
        spec = run.spec
        log.warning(
            "job %s: the thread of its run due %s still runs %.0fs after the run ended (%s);"
            " the job counts as running until it returns (%d abandoned threads)",
            spec.job_id,
            run.scheduled_time.isoformat(),
            time.time() - run.recorded_at,
            run.cancel_reason or "its task was cancelled",
            self._abandoned,
            extra={"job_id": spec.job_id},
        )
        if not job.removed:
            self._emit(
                ThreadAbandoned(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    scheduled_time=run.scheduled_time,
                    error=run.cancel_reason,
                    abandoned_threads=self._abandoned,
                )
            )

    def _thread_returned(self, job: _Job, run_id: int, run: _ActiveRun) -> None:
        if run.abandon_timer is not None:
            run.abandon_timer.cancel()
            run.abandon_timer = None
        if run.abandoned:
            self._abandoned -= 1
            if not run.holds_thread:
                self._replacements -= 1
            if self._metrics is not None:
                self._metrics.abandoned_threads(self._abandoned)
        late = time.time() - run.recorded_at
        spec = run.spec
        log.log(
            logging.WARNING if run.abandoned else logging.INFO,
            "job %s: the thread of its run due %s returned %.1fs after the run ended",
            spec.job_id,
            run.scheduled_time.isoformat(),
            late,
            extra={"job_id": spec.job_id},
        )
        self._end(job, run_id, run)
        if not job.removed:
            self._emit(
                ThreadReturned(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    scheduled_time=run.scheduled_time,
                    seconds_after_outcome=late,
                )
            )

    def _record(
        self,
        job: _Job,
        trigger: Trigger,
        scheduled_time: datetime,
        status: RunStatus,
        started: float | None,
        error: str | None,
    ) -> None:
        if job.removed:
            return
        self._version += 1
        duration = 0.0
        job.history = None
        if started is None:
            # A skipped tick is not a run: the last run's outcome stays what status shows.
            job.skipped += 1
        else:
            job.last_status = status
            duration = time.time() - started
            job.last_run_time = _utc(started)
            job.last_duration_seconds = duration
            job.total += 1
            if status is RunStatus.SUCCESS:
                job.succeeded += 1
            else:
                job.failed += 1
                if error is not None and self._config is not None:
                    # Status, Events and the System API show it: no Secret value in it.
                    error = self._config.redact(error)
                job.last_error = error
        if self._metrics is not None:
            self._metrics.run_recorded(
                job.spec.namespace,
                job.spec.name,
                trigger=trigger,
                status=status,
                duration_seconds=None if started is None else duration,
                ended_at=time.time(),
            )
        self._emit(
            RunFinished(
                job_id=job.spec.job_id,
                namespace=job.spec.namespace,
                name=job.spec.name,
                trigger=trigger,
                scheduled_time=scheduled_time,
                status=status,
                duration_seconds=duration,
                error=error,
            )
        )

    def _emit(self, event: JobEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a listener failed on %s", type(event).__name__)

    # -- shutdown ---------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop arming timers, signal cancellation, wait up to the shutdown timeout.

        Queued runs never start. Runs still active after
        ``shutdown_timeout_seconds`` are cancelled and recorded as failures
        (Interrupted). Runs whose outcome is recorded already (a thread that
        outlived its run) are not waited for. Returns at once when nothing runs.
        """
        self._closing = True
        self._cancel_timer()
        self._heap.clear()
        if self._watchdog is not None:
            self._watchdog.stop()
        runs = [
            (job, run_id, run) for job in self._jobs.values() for run_id, run in job.active.items()
        ]
        for _, _, run in runs:
            if run.started is None:
                self._cancel(run, NOT_STARTED)
            else:
                run.cancellation.set()
        tasks = {run.task for _, _, run in runs if run.task is not None and not run.task.done()}
        if tasks:
            log.info("waiting up to %ss for %d active runs", self._shutdown_timeout, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=self._shutdown_timeout)
            for _, _, run in runs:
                if run.task in pending:
                    self._cancel(run, INTERRUPTED)
            if pending:
                # Cancelled runs normally record their outcome at once; give
                # them a moment, then record the ones that ignore cancellation.
                await asyncio.wait(pending, timeout=1.0)
            for job, run_id, run in runs:
                if not run.recorded:
                    run.recorded = True
                    job.active.pop(run_id, None)
                    self._record(
                        job,
                        run.trigger,
                        run.scheduled_time,
                        RunStatus.FAILURE if run.started is not None else RunStatus.SKIPPED,
                        run.started,
                        INTERRUPTED,
                    )
        # Threads cannot be killed; whoever owns the process decides whether
        # to wait for them. Queued thread work that never started is dropped.
        self._pool.shutdown(wait=False, cancel_futures=True)


def _on_loop(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[], None],
    _: concurrent.futures.Future[None],
) -> None:
    """A thread's done callback: call ``callback`` on ``loop``'s thread, unless it is closed."""
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits for it any more
        loop.call_soon_threadsafe(callback)


def _call_in_thread(target: JobTarget, ctx: JobContext) -> None:
    token = otel_context.attach(ctx.trace_context or otel_context.get_current())
    try:
        target(ctx)
    finally:
        otel_context.detach(token)
