"""Runs: dispatch by overlap policy, then start → execute → record, and their shutdown.

A run waits for what it needs (:class:`podcron.engine.budgets.RunBudgets`),
its body runs (:func:`podcron.engine.runs.execute`), and its outcome is
recorded exactly once (:class:`podcron.engine.recording.Recorder`), when
the body returns, fails or is cancelled, or at its deadline. A plain ``def``
body cannot be stopped: a thread that outlives its run's outcome keeps the
job active until it returns (:mod:`podcron.engine.threads`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import time
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace

from podcron.context import Trigger
from podcron.engine.budgets import RunBudgets
from podcron.engine.burst import Burst
from podcron.engine.changes import JobChanges
from podcron.engine.clock import Clock
from podcron.engine.events import Listeners, RunStarted
from podcron.engine.jobs import JobState, why_busy
from podcron.engine.recording import Recorder
from podcron.engine.runs import ActiveRun, error_text, execute, prepare
from podcron.engine.shutdown import shut_down
from podcron.engine.spec import ConcurrencyPolicy, JobSpec
from podcron.engine.threads import OutlivedThreads
from podcron.engine.timeouts import RunTimeout
from podcron.errors import JobAlreadyRunning
from podcron.jobconfig import ConfigSource
from podcron.resources import ResourceManager
from podcron.runrecord import RunStatus
from podcron.telemetry.run_telemetry import RunTelemetry

log = logging.getLogger("podcron.engine")

#: The engine names each run's task this plus the job id (the watchdog reads it back).
RUN_TASK_PREFIX = "podcron-run "
#: A tick's span is made ahead only when it is due within this many seconds: one kept
#: longer would be promoted by the garbage collector and scanned by each of its full
#: passes, for a tick that may be a minute away.
PREPARE_AHEAD_SECONDS = 2.0

#: A run's start put off during a burst: its timeout to arm, then what ``RunStarted`` and
#: the lateness exemplar say: spec, trigger, scheduled time, started (wall clock), trace id;
#: and its job, whose next tick is prepared then.
StartPutOff = tuple[RunTimeout | None, JobSpec, Trigger, datetime, float, int, JobState]
#: A run put off during a burst: its span and the time it ended (ns), then what is recorded:
#: job, trigger, scheduled time, status, started, error, trace id, ended (wall clock).
PutOff = tuple[
    trace.Span,
    int,
    JobState,
    Trigger,
    datetime,
    RunStatus,
    float | None,
    str | None,
    int,
    float,
]


class Runner:
    """Starts, executes and records the runs of every job. Loop thread only."""

    def __init__(
        self,
        *,
        budgets: RunBudgets,
        threads_per_job: int,
        telemetry: RunTelemetry,
        listeners: Listeners,
        clock: Clock,
        resources: ResourceManager | None = None,
        config: ConfigSource | None = None,
        changes: JobChanges,
    ) -> None:
        if threads_per_job < 1:
            raise ValueError(f"threads_per_job must be at least 1, got {threads_per_job}")
        self._budgets = budgets
        # Runs that start or end while a burst is being started are put off here
        # (engine/burst.py).
        self._burst: Burst[StartPutOff | PutOff] = Burst()
        self._threads_per_job = threads_per_job
        self._telemetry = telemetry
        self._metrics = telemetry.metrics
        self._listeners = listeners
        self._clock = clock
        # What runs get beside their spec: ctx.resources and ctx.config. The
        # configuration's Secret values are also taken out of failed runs' errors.
        self._resources = resources
        self._config = config
        self._recorder = Recorder(
            clock=clock, metrics=self._metrics, listeners=listeners, config=config, changes=changes
        )
        self._record = self._recorder.record
        self._threads = OutlivedThreads(
            budgets=budgets,
            clock=clock,
            metrics=self._metrics,
            listeners=listeners,
        )
        self._run_ids = itertools.count()
        self._closing = False
        # Marked whenever a job's active runs change (the recorder marks its history).
        self._changes = changes

    def dispatch(
        self,
        job: JobState,
        trigger: Trigger,
        scheduled_time: datetime,
        *,
        parent: otel_context.Context | None,
        manual: bool,
        waits: list[asyncio.Future[None]] | None = None,
    ) -> None:
        spec = job.spec
        replaced: list[ActiveRun] | None = None
        if job.active:
            why = why_busy(job, manual=manual, threads_per_job=self._threads_per_job)
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
                # Its why is the skipped tick's error: the run history says it.
                self.not_started(job, trigger, scheduled_time, why)
                return
            if spec.concurrency_policy is ConcurrencyPolicy.REPLACE:
                replaced = list(job.active.values())
        if manual:
            self._budgets.admit_manual()
        if replaced is not None:
            for old in replaced:
                self.cancel(old, "Replaced: a newer run started (concurrencyPolicy Replace)")
        run = ActiveRun(
            trigger=trigger,
            scheduled_time=scheduled_time,
            spec=spec,
            is_async=job.is_async,
            manual=manual,
        )
        if trigger is Trigger.SCHEDULED:  # a manual run leaves the next tick's to it
            prepared, job.prepared = job.prepared, None
            if (
                prepared is not None
                and prepared.spec is spec  # not for a spec changed since
                and prepared.scheduled_time == scheduled_time
            ):
                run.prepared = prepared
        loop = asyncio.get_running_loop()
        if waits is not None:
            if run.prepared is None and self._telemetry.spans is not None:
                # Made ready ahead of its instant: its span too, not while the others wait.
                run.prepared = prepare(spec, scheduled_time, self._telemetry)
            run.instant = loop.create_future()
            waits.append(run.instant)
        run_id = next(self._run_ids)
        job.active[run_id] = run
        self._changes.mark(job.spec.job_id)
        if self._metrics is not None:
            self._metrics.run_queued()
        run.task = loop.create_task(
            self._run(job, run_id, run, parent, replaced), name=RUN_TASK_PREFIX + spec.job_id
        )

    def not_started(
        self, job: JobState, trigger: Trigger, scheduled_time: datetime, why: str
    ) -> None:
        """Record a tick that was to start and did not: skipped, for ``why``."""
        self._record(job, trigger, scheduled_time, RunStatus.SKIPPED, None, why)

    def cancel(self, run: ActiveRun, reason: str) -> None:
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
        job: JobState,
        run_id: int,
        run: ActiveRun,
        parent: otel_context.Context | None,
        replaced: list[ActiveRun] | None,
    ) -> None:
        span = None  # open once the body has run, until the run is recorded
        try:
            if run.cancel_reason is not None:  # cancelled before its task began
                raise asyncio.CancelledError
            # Queued: waiting is lateness, never duration, and the timeout clock has not started.
            if replaced:
                await _until_ended(replaced)
            if run.instant is not None:  # made ready ahead of it: no slot held till then
                await run.instant
            if not run.manual and not self._budgets.take(run):
                await self._budgets.acquire(run)
            # The body starts now: the run is late by the time it waited.
            started = run.started = self._clock.wall()
            if self._metrics is not None:
                self._metrics.run_started(run.trigger, started - run.scheduled_time.timestamp())
            span = await execute(
                run,
                self._telemetry,
                parent,
                self._budgets.pool,
                functools.partial(self._starting, job),
                resources=self._resources,
                config=self._config,
            )
        except asyncio.CancelledError:
            if run.started is None:
                run.error = run.cancel_reason or "cancelled before it started"
                log.info(
                    "job %s: the run due %s did not start: %s",
                    run.spec.job_id,
                    run.scheduled_time.isoformat(),
                    run.error,
                    extra={"job_id": run.spec.job_id},
                )
            if run.cancel_reason is None:
                raise
        except BaseException as failure:
            # Around the job's call: the context, the span, a listener.
            run.error = error_text(failure)
            log.error(
                "run of job %s failed around its call: %s",
                run.spec.job_id,
                run.error,
                exc_info=failure,
                extra={"job_id": run.spec.job_id},
            )
        finally:
            self._finish(job, run_id, run, span)

    def _starting(self, job: JobState, run: ActiveRun, guard: RunTimeout | None) -> None:
        """The run's body is called next: arm its timeout and tell of its start, after the
        burst if one is being started (engine/burst.py)."""
        assert run.started is not None
        entry = (guard, run.spec, run.trigger, run.scheduled_time, run.started, run.trace_id, job)
        if self._burst.going:
            self._burst.put_off_start(entry)
        else:
            self._started(entry)

    def _started(self, entry: StartPutOff) -> None:
        guard, spec, trigger, scheduled, started, trace_id, _ = entry
        if guard is not None:
            guard.arm()
        lateness = started - scheduled.timestamp()
        if trace_id and self._metrics is not None:
            self._metrics.run_traced(trigger, lateness, trace_id, at=started)
        self._listeners.emit(
            RunStarted(
                job_id=spec.job_id,
                namespace=spec.namespace,
                name=spec.name,
                trigger=trigger,
                scheduled_time=scheduled,
                lateness_seconds=lateness,
            )
        )

    def _prepare(self, job: JobState, trigger: Trigger) -> None:
        """Make the span and logger of the next tick of a job whose run started in a burst.

        Its tick will likely fall in one again (a thousand one-second jobs), and what is
        made now is not made while the others wait. Only for a tick due soon
        (:data:`PREPARE_AHEAD_SECONDS`).
        """
        due = job.next_due
        if (
            trigger is Trigger.SCHEDULED
            and self._telemetry.spans is not None
            and due is not None
            and not job.removed
            and due - self._clock.wall() <= PREPARE_AHEAD_SECONDS
        ):
            job.prepared = prepare(job.spec, datetime.fromtimestamp(due, UTC), self._telemetry)

    def burst_goes_on(self) -> None:
        """More runs are due now than were just started: put off recording those that end."""
        self._burst.goes_on(self._record_put_off)

    def burst_ahead(self) -> None:
        """Runs were made ready ahead of their instant: the burst goes on, no batch counted."""
        self._burst.ahead()

    def burst_over(self) -> None:
        """The last runs due now were started: record those put off, after them."""
        self._burst.over(self._record_put_off)

    def record_put_off(self) -> None:
        """Record every run put off, now (the engine's shutdown does, first)."""
        self._burst.flush(self._record_put_off)

    def _record_put_off(self, entry: StartPutOff | PutOff) -> None:
        if len(entry) == 7:  # a start (StartPutOff); an outcome (PutOff) has ten values
            self._started(entry)
            self._prepare(entry[6], entry[2])
            return
        span, ended_ns, job, trigger, scheduled, status, started, error, trace_id, ended = entry
        span.end(ended_ns)
        self._record(job, trigger, scheduled, status, started, error, trace_id, ended=ended)

    def _finish(self, job: JobState, run_id: int, run: ActiveRun, span: trace.Span | None) -> None:
        """Record the run's outcome once; end it now unless its thread runs on.

        ``span``: the run's, still open (None: it never got one). During a burst the
        recording of a run whose body returned is put off (engine/burst.py): what waits
        is the outcome's values, not the run and its task, which kept alive past the
        young garbage collections would be promoted and bring on full ones; the
        outcome and the span keep the time the body returned.
        """
        thread = run.thread
        body_returned = thread is None or thread.done()
        if body_returned:
            self._end(job, run_id, run)
        if span is not None and body_returned and not run.recorded and self._burst.going:
            run.recorded = True
            self._burst.put_off(
                (
                    span,
                    time.time_ns(),
                    job,
                    run.trigger,
                    run.scheduled_time,
                    run.status,
                    run.started,
                    run.error,
                    run.trace_id,
                    self._clock.wall(),
                )
            )
            return
        if span is not None:
            span.end()
        if not run.recorded:
            run.recorded = True
            if self._burst.going:  # its start may be put off still: told before its outcome
                self._burst.starts_now(self._record_put_off)
            status = RunStatus.SKIPPED if run.started is None else run.status
            self._record(
                job, run.trigger, run.scheduled_time, status, run.started, run.error, run.trace_id
            )
        if not body_returned:
            self._threads.watch(job, run_id, run, end=self._end, closing=self._closing)

    def _end(self, job: JobState, run_id: int, run: ActiveRun) -> None:
        """The run's body has returned (or never started): release what it held."""
        run.ended = True
        job.active.pop(run_id, None)
        self._changes.mark(job.spec.job_id)
        self._budgets.release(run)
        if self._metrics is not None:
            if run.started is None:
                self._metrics.run_dropped()
            else:
                self._metrics.run_ended()
        if run.successors is not None:
            for waiter in run.successors:
                if not waiter.done():
                    waiter.set_result(None)

    async def shutdown(self, jobs: list[JobState], wait_seconds: float) -> None:
        """Stop the active runs of ``jobs`` (:func:`podcron.engine.shutdown.shut_down`)."""
        self._closing = True
        await shut_down(jobs, wait_seconds=wait_seconds, cancel=self.cancel, record=self._record)
        # Threads cannot be killed; whoever owns the process decides whether
        # to wait for them. Queued thread work that never started is dropped.
        self._budgets.pool.shutdown(wait=False, cancel_futures=True)


async def _until_ended(runs: list[ActiveRun]) -> None:
    """Return once every run in ``runs`` has ended (Replace: one body at a time)."""
    loop = asyncio.get_running_loop()
    for old in runs:
        if not old.ended:
            waiter = loop.create_future()
            if old.successors is None:
                old.successors = []
            old.successors.append(waiter)
            await waiter
