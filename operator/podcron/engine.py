"""The scheduling engine: asyncio timers, dispatch, overlap policies, timeouts, shutdown.

Pure asyncio: it knows nothing of Kubernetes or kopf. The operator registers
jobs with :meth:`Engine.upsert` and learns what happens through listeners.

One timer serves every job: a heap of due times with a single
``loop.call_at`` handle for the earliest one, so 10,000 jobs cost one timer
and zero jobs cost none. Due times are wall-clock (schedules are about wall
time) while asyncio timers run on the monotonic clock, so each wake-up
re-reads the wall clock: a clock stepped back re-arms instead of firing
early, and a clock stepped forward fires what became due instead of skipping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import inspect
import itertools
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from podcron.context import Cancellation, JobContext, Trigger
from podcron.entrypoints import JobTarget
from podcron.errors import JobAlreadyRunning, JobNotFound
from podcron.schedules import Schedule
from podcron.telemetry import logs, tracing
from podcron.telemetry.metrics import JobMetrics

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
    """A run began; ``lateness_seconds`` is its start minus its due time."""

    job_id: str
    namespace: str
    name: str
    trigger: Trigger
    scheduled_time: datetime
    lateness_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    """A run ended, or a tick was skipped (``status`` SKIPPED, no RunStarted before it)."""

    job_id: str
    namespace: str
    name: str
    trigger: Trigger
    scheduled_time: datetime
    status: RunStatus
    duration_seconds: float
    error: str | None


JobEvent = RunStarted | RunFinished
Listener = Callable[[JobEvent], None]


@dataclass(slots=True, eq=False)
class _ActiveRun:
    trigger: Trigger
    scheduled_time: datetime
    started: float
    cancellation: Cancellation = field(default_factory=Cancellation)
    task: asyncio.Task[None] | None = None
    # Why the engine cancelled it, recorded as the run's error.
    cancel_reason: str | None = None
    # Set once the outcome is recorded: at shutdown the engine records runs
    # that ignore cancellation itself, and their task must not record again.
    recorded: bool = False


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


class Engine:
    """Runs registered jobs on time. Every method must be called on the event loop's thread."""

    def __init__(
        self,
        *,
        max_concurrent_runs: int = 100,
        worker_threads: int = 8,
        shutdown_timeout_seconds: float = 25.0,
        listeners: Iterable[Listener] = (),
        metrics: JobMetrics | None = None,
    ) -> None:
        if max_concurrent_runs < 1:
            raise ValueError(f"max_concurrent_runs must be at least 1, got {max_concurrent_runs}")
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
        self._pool = ThreadPoolExecutor(worker_threads, thread_name_prefix="podcron-job")
        self._shutdown_timeout = shutdown_timeout_seconds
        self._listeners = list(listeners)
        self._metrics = metrics
        self._closing = False
        self._version = 0

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

        Raises :class:`JobNotFound`, or :class:`JobAlreadyRunning` under Forbid.
        A ``traceparent`` in ``trace_headers`` makes the run's span its child.
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
        """How many runs are active now."""
        return sum(len(job.active) for job in self._jobs.values())

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
        if job.active:
            policy = spec.concurrency_policy
            if policy is ConcurrencyPolicy.FORBID:
                if manual:
                    raise JobAlreadyRunning(spec.job_id)
                log.info(
                    "job %s skipped its %s tick: a run is active (concurrencyPolicy Forbid)",
                    spec.job_id,
                    scheduled_time.isoformat(),
                    extra={"job_id": spec.job_id},
                )
                self._record(job, trigger, scheduled_time, RunStatus.SKIPPED, None, None)
                return
            if policy is ConcurrencyPolicy.REPLACE:
                for run in job.active.values():
                    self._cancel(run, "Replaced: a newer run started (concurrencyPolicy Replace)")
        run = _ActiveRun(trigger=trigger, scheduled_time=scheduled_time, started=time.time())
        run_id = next(self._run_ids)
        job.active[run_id] = run
        self._version += 1
        run.task = asyncio.get_running_loop().create_task(
            self._run(job, run_id, run, parent), name=f"podcron-run {spec.job_id}"
        )

    def _cancel(self, run: _ActiveRun, reason: str) -> None:
        if run.cancel_reason is None:
            run.cancel_reason = reason
        run.cancellation.set()
        if run.task is not None:
            run.task.cancel()

    async def _run(
        self,
        job: _Job,
        run_id: int,
        run: _ActiveRun,
        parent: otel_context.Context | None,
    ) -> None:
        spec, trigger, scheduled_time = job.spec, run.trigger, run.scheduled_time
        # Time spent queued on the loop after dispatch counts as lateness.
        started = run.started = time.time()
        status, error = RunStatus.SUCCESS, None
        try:
            if self._metrics is not None:
                self._metrics.run_started(trigger, started - scheduled_time.timestamp())
            self._emit(
                RunStarted(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    trigger=trigger,
                    scheduled_time=scheduled_time,
                    lateness_seconds=started - scheduled_time.timestamp(),
                )
            )
            with tracing.start_run_span(
                job_id=spec.job_id,
                trigger=trigger.value,
                entry_point=spec.entry_point,
                scheduled_time=scheduled_time,
                parent=parent,
            ) as span:
                trace_context = trace.set_span_in_context(span, parent)
                timeout = spec.timeout_seconds
                ctx = JobContext(
                    job_id=spec.job_id,
                    namespace=spec.namespace,
                    name=spec.name,
                    trigger=trigger,
                    scheduled_time=scheduled_time,
                    args=spec.args,
                    log=logs.job_logger(job_log, job_id=spec.job_id, span=span),
                    deadline=None
                    if timeout is None
                    else _utc(started) + timedelta(seconds=timeout),
                    cancelled=run.cancellation,
                    trace_context=trace_context,
                )
                guard = None if timeout is None else asyncio.timeout(timeout)
                try:
                    async with self._slots, guard or _NO_TIMEOUT:
                        await self._call(job.is_async, spec.target, ctx)
                except TimeoutError as timeout_error:
                    status = RunStatus.FAILURE
                    if guard is not None and guard.expired():
                        run.cancellation.set()
                        error = f"TimeoutError: run exceeded {timeout}s"
                        tracing.record_failure(span, timeout_error, description=error)
                        ctx.log.error("run timed out after %ss", timeout, exc_info=timeout_error)
                    else:  # the job's own TimeoutError, not its deadline
                        error = _failed(span, ctx, timeout_error)
                except asyncio.CancelledError as cancelled:
                    if run.cancel_reason is None:
                        raise
                    status, error = RunStatus.FAILURE, run.cancel_reason
                    tracing.record_failure(span, cancelled, description=error)
                    ctx.log.error("run cancelled: %s", error)
                except BaseException as failure:
                    status, error = RunStatus.FAILURE, _failed(span, ctx, failure)
        finally:
            if self._metrics is not None:
                self._metrics.run_ended()
            job.active.pop(run_id, None)
            self._version += 1
            if not run.recorded:
                run.recorded = True
                self._record(job, trigger, scheduled_time, status, started, error)

    async def _call(self, is_async: bool, target: JobTarget, ctx: JobContext) -> None:
        if is_async:
            token = otel_context.attach(ctx.trace_context or otel_context.get_current())
            try:
                await target(ctx)
            finally:
                otel_context.detach(token)
            return
        await asyncio.get_running_loop().run_in_executor(self._pool, _call_in_thread, target, ctx)

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

        Runs still active after ``shutdown_timeout_seconds`` are cancelled and
        recorded as failures (Interrupted). Returns at once when nothing runs.
        """
        self._closing = True
        self._cancel_timer()
        self._heap.clear()
        runs = [
            (job, run_id, run) for job in self._jobs.values() for run_id, run in job.active.items()
        ]
        for _, _, run in runs:
            run.cancellation.set()
        tasks = {run.task for _, _, run in runs if run.task is not None}
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
                        RunStatus.FAILURE,
                        run.started,
                        INTERRUPTED,
                    )
        # Threads cannot be killed; whoever owns the process decides whether
        # to wait for them. Queued thread work that never started is dropped.
        self._pool.shutdown(wait=False, cancel_futures=True)


def _call_in_thread(target: JobTarget, ctx: JobContext) -> None:
    token = otel_context.attach(ctx.trace_context or otel_context.get_current())
    try:
        target(ctx)
    finally:
        otel_context.detach(token)
