"""One run: what the engine tracks of it while it is active, and the execution of its body.

A run is *queued* from the moment it is accepted until its body starts (it
waits for a run slot, for a thread, or for the run it replaces to stop),
*running* while its body executes, and *active* (what the overlap policy and
``status.running`` see) until its body has returned. :func:`execute` calls the
body under its timeout and turns however it ends into the run's outcome;
:func:`prepare` makes what its span and log need ahead of a scheduled tick.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace

from podcron.context import Cancellation, JobContext, Trigger
from podcron.engine.spec import JobSpec
from podcron.engine.timeouts import RunTimeout
from podcron.entrypoints import JobTarget
from podcron.errors import ResourceUnavailable, UnknownResource
from podcron.jobconfig import NO_CONFIG, ConfigSource
from podcron.resources import NO_RESOURCES, ResourceManager, RunResources
from podcron.runrecord import RunStatus
from podcron.telemetry import logs
from podcron.telemetry.run_span import RunSpan, record_failure, sampled_trace_id
from podcron.telemetry.run_telemetry import RunTelemetry

job_log = logging.getLogger("podcron.job")

ERROR_TEXT_LIMIT = 1024
#: Ends an error text cut to ERROR_TEXT_LIMIT, within the limit.
TRUNCATED = "... (truncated)"


class Prepared(NamedTuple):
    """A scheduled tick's span, trace context and job logger, made ahead of it (:func:`prepare`).

    Used by the run of that tick under that spec, if it starts; else dropped, never
    ended, so no span of it is exported: a tick that does not start leaves no trace.
    """

    scheduled_time: datetime
    spec: JobSpec
    span: trace.Span
    trace_id: int
    trace_context: otel_context.Context
    log: logging.LoggerAdapter[logging.Logger]


def prepare(spec: JobSpec, scheduled_time: datetime, telemetry: RunTelemetry) -> Prepared:
    """What the run of ``spec`` due at ``scheduled_time`` can have made before it is due.

    A span (its ids, attributes and sampling decision), the trace context holding it
    and the job's logger bound to it: about a quarter of what a run did between its
    tick and its body with tracing on (``telemetry.spans``; with it off a run makes
    next to nothing of these).
    """
    span = telemetry.start_span(
        job_id=spec.job_id,
        trigger=Trigger.SCHEDULED.value,
        entry_point=spec.entry_point,
        scheduled_time=scheduled_time,
        parent=None,
    )
    return Prepared(
        scheduled_time,
        spec,
        span,
        sampled_trace_id(span),
        trace.set_span_in_context(span),
        logs.job_logger(job_log, job_id=spec.job_id, span=span),
    )


@dataclass(slots=True, eq=False)
class ActiveRun:
    """A run from its acceptance until its body has returned (or it never started)."""

    trigger: Trigger
    scheduled_time: datetime
    # The spec the run was accepted under: an update must not change a run midway.
    spec: JobSpec
    is_async: bool
    manual: bool
    # When the body started (wall clock); None while queued.
    started: float | None = None
    # The run's exported trace (0: none), the exemplar of its lateness and duration.
    trace_id: int = 0
    # The outcome so far: not a success until the body has returned, so that
    # anything that goes wrong on the way (the deadline, telemetry, the
    # context) fails the run.
    status: RunStatus = RunStatus.FAILURE
    error: str | None = None
    cancellation: Cancellation = field(default_factory=Cancellation)
    task: asyncio.Task[None] | None = None
    # Why the engine cancelled it, recorded as the run's error.
    cancel_reason: str | None = None
    # Set once the outcome is recorded: at shutdown the engine records runs
    # that ignore cancellation itself, and their task must not record again.
    recorded: bool = False
    # When a run whose thread outlived it was recorded (for the abandonment log).
    recorded_at: float = 0.0
    # What it holds until its body has returned, released when it ends.
    holds_slot: bool = False
    holds_thread: bool = False
    # A plain def body's thread, and whether it outlived the run (abandoned).
    thread: concurrent.futures.Future[None] | None = None
    abandoned: bool = False
    abandon_timer: asyncio.TimerHandle | None = None
    ended: bool = False
    # Runs (of Replace) waiting for this one to end.
    successors: list[asyncio.Future[None]] | None = None
    # Its span, trace context and logger, made before it was due (None: made as it starts).
    prepared: Prepared | None = None
    # Dispatched ahead of its instant: set then (None: dispatched at it).
    instant: asyncio.Future[None] | None = None


def error_text(error: BaseException) -> str:
    """The exception as one status line, cut to :data:`ERROR_TEXT_LIMIT` characters."""
    text = "".join(traceback.format_exception_only(error)).strip()
    if len(text) <= ERROR_TEXT_LIMIT:
        return text
    return text[: ERROR_TEXT_LIMIT - len(TRUNCATED)] + TRUNCATED


def deadline_of(started: float, timeout: float) -> datetime:
    """When a run that started at ``started`` times out; any positive timeout is accepted.

    One beyond what a datetime can hold (past the year 9999) is that far:
    the run is never cut short, and its context says 9999-12-31.
    """
    if not timeout > 0:  # also NaN
        raise ValueError(f"timeoutSeconds must be positive, got {timeout}")
    try:
        # One datetime, not one and a timedelta added: every run with a timeout makes it.
        return datetime.fromtimestamp(started + timeout, UTC)
    except (OverflowError, ValueError, OSError):  # past the year 9999, or what time_t holds
        return datetime.max.replace(tzinfo=UTC)


#: Called as the run's body is about to start, with its timeout (None: it has none), not
#: armed yet: the runner arms it and tells of the start, now or once a burst is over.
Starting = Callable[[ActiveRun, RunTimeout | None], None]


async def execute(
    run: ActiveRun,
    telemetry: RunTelemetry,
    parent: otel_context.Context | None,
    pool: concurrent.futures.Executor,
    starting: Starting,
    *,
    resources: ResourceManager | None = None,
    config: ConfigSource | None = None,
) -> trace.Span:
    """Call the run's body in its span and context, under its timeout; set its outcome.

    ``starting`` hears of the run just before its body is called (once its span,
    trace id and context are made, or taken from ``run.prepared``). ``resources``
    and ``config`` give the context its ``resources`` (those the spec lists) and
    ``config``. ``run.started`` must be set. Returns the run's span, still open:
    the caller ends it, now or, while more runs are being started, later
    (:mod:`podcron.engine.burst`). Raises CancelledError only when someone other
    than the engine cancels the task (the outcome is set first, the span ended).
    """
    spec = run.spec
    assert run.started is not None
    timeout = spec.timeout_seconds
    deadline = None if timeout is None else deadline_of(run.started, timeout)
    prepared = run.prepared
    if prepared is None:
        span = telemetry.start_span(
            job_id=spec.job_id,
            trigger=run.trigger.value,
            entry_point=spec.entry_point,
            scheduled_time=run.scheduled_time,
            parent=parent,
        )
    else:
        span = prepared.span
        if isinstance(span, RunSpan):
            span.begin()
    try:
        trace_context: otel_context.Context | None
        if prepared is None:
            if telemetry.spans is not None:  # else no span is exported: no trace to link to
                run.trace_id = sampled_trace_id(span)
            # No span anywhere (tracing off, no caller's trace): nothing to make current
            # (_attach).
            trace_context = (
                None if span is trace.INVALID_SPAN else trace.set_span_in_context(span, parent)
            )
            log = logs.job_logger(job_log, job_id=spec.job_id, span=span)
        else:
            run.trace_id = prepared.trace_id
            trace_context = prepared.trace_context
            log = prepared.log
        # Resources created already are handed over at once; None: acquire below.
        run_resources = NO_RESOURCES if not spec.resources else _ready(resources, spec.resources)
        ctx = JobContext(
            job_id=spec.job_id,
            namespace=spec.namespace,
            name=spec.name,
            trigger=run.trigger,
            scheduled_time=run.scheduled_time,
            args=spec.args,
            log=log,
            deadline=deadline,
            cancelled=run.cancellation,
            trace_context=trace_context,
            config=NO_CONFIG if config is None else config.snapshot(),
            resources=NO_RESOURCES if run_resources is None else run_resources,
        )
        guard = None if timeout is None else RunTimeout(timeout, armed=False)
        pending = None if run_resources is not None else spec.resources
        starting(run, guard)
        try:
            if guard is None:
                await _call(run, ctx, pool, resources, pending)
            else:
                try:
                    await _call(run, ctx, pool, resources, pending)
                except BaseException as error:
                    guard.end(error)
                    raise
                guard.end(None)
        except TimeoutError as timeout_error:
            if guard is not None and guard.expired:
                run.error = _timed_out(run, span, ctx, timeout_error)
            else:  # the job's own TimeoutError, not its deadline
                run.error = _failed(span, ctx, timeout_error)
        except (ResourceUnavailable, UnknownResource) as unavailable:
            # The job never ran and it is not its bug: one line, no traceback.
            run.error = str(unavailable)
            record_failure(span, unavailable, description=run.error)
            ctx.log.error("run not started: %s", run.error)
        except asyncio.CancelledError as cancelled:
            if run.cancel_reason is not None:
                run.error = _cancelled(span, ctx, run.cancel_reason, cancelled)
            else:
                # The job raised it itself, or awaited something that was
                # cancelled: a failure like any other exception.
                run.error = _failed(span, ctx, cancelled)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # someone else cancels this task: let them see it
        except BaseException as failure:
            run.error = _failed(span, ctx, failure)
        else:
            if guard is not None and guard.expired:
                # It swallowed the timeout's cancellation and returned late.
                run.error = _timed_out(run, span, ctx, TimeoutError())
            elif run.cancel_reason is None:
                run.status = RunStatus.SUCCESS
            else:  # cancelled by the engine, yet returned: still cut short
                run.error = _cancelled(span, ctx, run.cancel_reason, asyncio.CancelledError())
    except BaseException:
        span.end()
        raise
    return span


async def _call(
    run: ActiveRun,
    ctx: JobContext,
    pool: concurrent.futures.Executor,
    resources: ResourceManager | None,
    pending: tuple[str, ...] | None,
) -> None:
    """Call the run's body; ``pending``: the resources to wait for first (None: none)."""
    if pending is not None:
        # Within the timeout and the span: waiting for a resource being
        # created is part of the run.
        ctx = ctx._replace(resources=await _acquire(resources, pending))
    target = run.spec.target
    if run.is_async:
        token = _attach(ctx)
        try:
            await target(ctx)
        finally:
            if token is not None:
                otel_context.detach(token)
    else:
        run.thread = pool.submit(_call_in_thread, target, ctx)
        await asyncio.wrap_future(run.thread)


def _ready(resources: ResourceManager | None, names: tuple[str, ...]) -> RunResources | None:
    return None if resources is None else resources.ready(names)


async def _acquire(resources: ResourceManager | None, names: tuple[str, ...]) -> RunResources:
    if resources is None:
        raise UnknownResource(names[0], ())
    return await resources.acquire(names)


def _failed(span: trace.Span, ctx: JobContext, failure: BaseException) -> str:
    """Record a job's exception on its span and in its log; return the status text."""
    error = error_text(failure)
    record_failure(span, failure, description=error)
    ctx.log.error("run failed: %s", error, exc_info=failure)
    return error


def _cancelled(
    span: trace.Span, ctx: JobContext, reason: str, cancelled: asyncio.CancelledError
) -> str:
    """Record the engine's cancellation on the run's span and in its log; return the status text.

    The same whether the body stopped or swallowed the cancellation and returned: either
    way the job's log says why its run failed.
    """
    record_failure(span, cancelled, description=reason)
    ctx.log.error("run cancelled: %s", reason)
    return reason


def _timed_out(run: ActiveRun, span: trace.Span, ctx: JobContext, timeout: TimeoutError) -> str:
    """Record a run's timeout on its span and in its log; return the status text."""
    seconds = run.spec.timeout_seconds
    error = run.cancel_reason = f"TimeoutError: run exceeded {seconds}s"
    run.cancellation.set()
    record_failure(span, timeout, description=error)
    ctx.log.error("run timed out after %ss", seconds, exc_info=timeout)
    return error


def _attach(ctx: JobContext) -> contextvars.Token[otel_context.Context] | None:
    """Make the run's trace context current, so that the job's own spans are its children.

    None when the run has none: the context its code runs in (the run's task's, or a pool
    thread's) holds no span already, and attaching it again would cost every run twice.
    """
    return None if ctx.trace_context is None else otel_context.attach(ctx.trace_context)


def _call_in_thread(target: JobTarget, ctx: JobContext) -> None:
    token = _attach(ctx)
    try:
        target(ctx)
    finally:
        if token is not None:
            otel_context.detach(token)
