"""Testing jobs with pytest: a :class:`JobContext` for a unit test, one run of a job, its ticks.

A job is a function of a :class:`~podcron.JobContext`, so a unit test builds one
and calls the job, or lets :meth:`JobHarness.run` call it the way the operator
does and report the outcome::

    from podcron.testing import harness, next_runs

    def test_cleanup_stops_when_cancelled():
        run = harness(args={"retentionDays": 30}, cancelled=True)
        outcome = run.run(cleanup)
        assert outcome.succeeded
        assert "cancelled after 0 batches" in run.messages

:meth:`JobHarness.run` follows the operator's rules for one run: an ``async
def`` job runs on the event loop and is cancelled at its timeout; a plain
``def`` job runs in a thread of its own, which cannot be stopped: at the
timeout ``ctx.cancelled`` becomes true and the outcome is a failure at once.
Any exception the job raises (``asyncio.CancelledError`` included, unless the
run was cancelled) is a failure, logged with its traceback on ``ctx.log``.

The clock the job reads is the test's: ``now`` sets ``ctx.scheduled_time``
(unless given) and ``ctx.deadline``; the timeout itself is real seconds.
``podcron run`` runs jobs with this same harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace

from podcron.context import Cancellation, JobContext, Trigger
from podcron.engine import ABANDON_AFTER_SECONDS, ERROR_TEXT_LIMIT, RunStatus
from podcron.engine.runs import TRUNCATED
from podcron.entrypoints import JobTarget
from podcron.jobconfig import NO_CONFIG, JobConfig
from podcron.resources import NO_RESOURCES, RunResources
from podcron.schedules import Schedule, parse_schedule
from podcron.telemetry import logs

__all__ = ["JobHarness", "Outcome", "harness", "next_runs"]

log = logging.getLogger("podcron.testing")
_JOB_LOG = logging.getLogger("podcron.job")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one run ended, as the operator would record it.

    ``status`` is ``success`` or ``failure``; ``skipped`` when the run was
    cancelled before the job was called. ``error`` is the one line the
    operator writes to ``status.lastError``; ``exception`` is what the job
    raised (``None`` on success, at a timeout ``TimeoutError``).
    ``thread_still_running`` is true when a plain ``def`` job's thread had
    not returned a second after a timeout or cancellation: the operator
    would report it abandoned.
    """

    status: RunStatus
    error: str | None
    exception: BaseException | None
    duration_seconds: float
    thread_still_running: bool = False

    @property
    def succeeded(self) -> bool:
        """Whether the run succeeded."""
        return self.status is RunStatus.SUCCESS


class _Captured(logging.Handler):
    """Keeps every record logged on a harness's ``ctx.log``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class JobHarness:
    """A :class:`JobContext` for one run, what the job logged, and a way to cancel it.

    Build one with :func:`harness`.
    """

    def __init__(
        self, ctx: JobContext, *, timeout: float | None, captured: _Captured | None
    ) -> None:
        #: The context to pass to the job (or that :meth:`run` passes).
        self.ctx = ctx
        #: Seconds the run may take before it is cut short; ``None``: no limit.
        self.timeout = timeout
        self._captured = captured
        self._cancel_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._body: asyncio.Future[Any] | None = None

    @property
    def records(self) -> list[logging.LogRecord]:
        """The records the job logged on ``ctx.log``, oldest first (empty unless captured)."""
        return [] if self._captured is None else list(self._captured.records)

    @property
    def messages(self) -> list[str]:
        """The messages the job logged on ``ctx.log``, formatted, oldest first."""
        return [record.getMessage() for record in self.records]

    def cancel(self, reason: str = "Cancelled: the test cancelled the run") -> None:
        """Cancel the run as the operator does: ``ctx.cancelled`` becomes true, and an async
        job's run in progress is cancelled. Safe from any thread, also before the run."""
        loop = self._loop
        if loop is not None and not _on_thread_of(loop):
            loop.call_soon_threadsafe(self._cancel_now, reason)
        else:
            self._cancel_now(reason)

    def _cancel_now(self, reason: str) -> None:
        if self._cancel_reason is None:
            self._cancel_reason = reason
        self.ctx.cancelled.set()
        if self._body is not None:
            self._body.cancel()

    def run(self, target: JobTarget) -> Outcome:
        """Run ``target`` once with :attr:`ctx` on an event loop of its own; return the outcome.

        From a coroutine (an async test) use :meth:`run_async`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # none: the usual case, a plain test function
            return asyncio.run(self.run_async(target))
        raise RuntimeError("an event loop is running here: await harness.run_async(job)")

    async def run_async(self, target: JobTarget) -> Outcome:
        """Run ``target`` once with :attr:`ctx` on the running loop; return the outcome."""
        if self._loop is not None:
            raise RuntimeError("a harness runs its job once: build another with harness()")
        self._loop = asyncio.get_running_loop()
        ctx = self.ctx
        if self._cancel_reason is not None:
            # As the operator does with a run cancelled while queued: the job is never called.
            ctx.log.error("run cancelled before it started: %s", self._cancel_reason)
            return Outcome(
                status=RunStatus.SKIPPED,
                error=self._cancel_reason,
                exception=None,
                duration_seconds=0.0,
            )
        started = time.monotonic()
        returned: asyncio.Future[None] | None = None
        if _is_async(target):
            self._body = asyncio.ensure_future(target(ctx))
        else:
            returned = self._loop.create_future()
            self._body = asyncio.shield(returned)
            _start_thread(target, ctx, returned)
        guard = None if self.timeout is None else asyncio.timeout(self.timeout)
        error: str | None = None
        exception: BaseException | None = None
        try:
            async with guard or contextlib.nullcontext():
                await self._body
        except TimeoutError as timeout_error:
            exception = timeout_error
            if guard is not None and guard.expired():
                error = self._timed_out(timeout_error)
            else:  # the job's own TimeoutError, not its deadline
                error = _failed(ctx, timeout_error)
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                self._cancel_now("Cancelled: whatever awaited the run was cancelled")
                raise  # someone cancels the caller: let them see it
            exception = cancelled
            if self._cancel_reason is not None:
                error = self._cancel_reason
                ctx.log.error("run cancelled: %s", error)
            else:  # the job raised it itself, or awaited something cancelled
                error = _failed(ctx, cancelled)
        except BaseException as failure:
            exception = failure
            error = _failed(ctx, failure)
        else:
            if guard is not None and guard.expired():
                # It swallowed the timeout's cancellation and returned late.
                exception = TimeoutError()
                error = self._timed_out(exception)
            elif self._cancel_reason is not None:  # cancelled, yet returned: still cut short
                error = self._cancel_reason
                ctx.log.error("run cancelled: %s", error)
        duration = time.monotonic() - started
        still_running = returned is not None and not await _returns_soon(returned)
        if still_running:
            log.warning(
                "job %s: its thread still runs %ss after the run ended (%s); "
                "check ctx.cancelled in long loops",
                ctx.job_id,
                ABANDON_AFTER_SECONDS,
                error,
            )
        return Outcome(
            status=RunStatus.SUCCESS if error is None else RunStatus.FAILURE,
            error=error,
            exception=exception,
            duration_seconds=duration,
            thread_still_running=still_running,
        )

    def _timed_out(self, timeout: TimeoutError) -> str:
        self.ctx.cancelled.set()
        self.ctx.log.error("run timed out after %ss", self.timeout, exc_info=timeout)
        return f"TimeoutError: run exceeded {self.timeout}s"


def harness(
    *,
    args: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    scheduled_time: datetime | None = None,
    timeout: float | None = None,
    trigger: Trigger = Trigger.MANUAL,
    namespace: str = "default",
    name: str = "job",
    cancelled: bool = False,
    capture_logs: bool = True,
    resources: Mapping[str, object] | None = None,
    config: JobConfig | None = None,
) -> JobHarness:
    """A :class:`JobHarness` whose ``ctx`` says what a real run's would.

    ``now`` (aware; default: the current time) is the run's start: it is
    ``ctx.scheduled_time`` unless ``scheduled_time`` is given, and
    ``ctx.deadline`` is ``now + timeout`` (``None`` without a timeout).
    ``cancelled`` starts with ``ctx.cancelled`` already true, as a plain ``def``
    job finds it when the operator cancels its run midway; the job still runs
    and its outcome is its own (:meth:`JobHarness.cancel` cancels a run). With
    ``capture_logs`` (the default) what the job logs is kept in
    :attr:`JobHarness.records` as well as passed on to the ``podcron.job``
    logger (so pytest's ``caplog`` sees it too).

    ``resources`` is what ``ctx.resources`` holds (the objects, by name: a test's
    own, or a fake); ``config`` is ``ctx.config``, such as
    ``ConfigSource(config_dir, secrets_dir).snapshot()`` over a directory the
    test writes (each file a key).
    """
    start = datetime.now(UTC) if now is None else _aware("now", now)
    scheduled = start if scheduled_time is None else _aware("scheduled_time", scheduled_time)
    if timeout is not None and not timeout > 0:  # also NaN
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    job_id = f"{namespace}/{name}"
    captured = _Captured() if capture_logs else None
    logger = _JOB_LOG
    if captured is not None:
        # A logger of its own, so that harnesses never see each other's records;
        # its records still travel up to the podcron.job logger and the root.
        logger = logging.Logger(_JOB_LOG.name, logging.DEBUG)
        logger.parent = _JOB_LOG
        logger.addHandler(captured)
    cancellation = Cancellation()
    if cancelled:
        cancellation.set()
    ctx = JobContext(
        job_id=job_id,
        namespace=namespace,
        name=name,
        trigger=trigger,
        scheduled_time=scheduled,
        args=dict(args or {}),
        log=logs.job_logger(logger, job_id=job_id, span=trace.INVALID_SPAN),
        deadline=None if timeout is None else _deadline(start, timeout),
        cancelled=cancellation,
        resources=NO_RESOURCES if resources is None else RunResources(resources),
        config=NO_CONFIG if config is None else config,
    )
    return JobHarness(ctx, timeout=timeout, captured=captured)


def next_runs(
    schedule: Schedule | Mapping[str, Any],
    now: datetime,
    n: int = 5,
    *,
    time_zone: str = "UTC",
) -> list[datetime]:
    """The first ``n`` ticks of ``schedule`` after ``now``, as aware UTC datetimes.

    ``schedule`` is a ScheduledJob's ``spec.schedule`` (such as ``{"daily":
    {"at": "02:30"}}``, read in ``time_zone``) or a :class:`Schedule`. Fewer
    than ``n`` when the schedule runs out (past the year 9999, or never).
    A schedule the operator would refuse raises
    :class:`podcron.errors.InvalidSchedule` naming the field.
    """
    if not isinstance(schedule, Schedule):
        schedule = parse_schedule(schedule, time_zone=time_zone)
    ticks: list[datetime] = []
    moment: datetime | None = _aware("now", now)
    while len(ticks) < n and moment is not None:
        moment = schedule.next_after(moment)
        if moment is not None:
            ticks.append(moment)
    return ticks


def _aware(what: str, moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {moment!r}")
    return moment


def _deadline(start: datetime, timeout: float) -> datetime:
    try:
        return start + timedelta(seconds=timeout)
    except OverflowError:  # as the operator: a deadline past the calendar is its last day
        return datetime.max.replace(tzinfo=UTC)


def _is_async(target: JobTarget) -> bool:
    call = getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def _on_thread_of(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _start_thread(target: JobTarget, ctx: JobContext, returned: asyncio.Future[None]) -> None:
    """Call a plain ``def`` job in a daemon thread: one that never returns cannot hold the
    process open after the run's outcome."""
    loop = returned.get_loop()

    def settle(failure: BaseException | None) -> None:
        if returned.done():
            return
        if failure is None:
            returned.set_result(None)
        else:
            returned.set_exception(failure)

    def call() -> None:
        failure: BaseException | None = None
        try:
            target(ctx)
        except BaseException as error:
            failure = error
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, failure)

    threading.Thread(target=call, name=f"podcron-job {ctx.job_id}", daemon=True).start()


async def _returns_soon(returned: asyncio.Future[None]) -> bool:
    """Whether a job's thread returns within :data:`ABANDON_AFTER_SECONDS`."""
    if not returned.done():
        await asyncio.wait([returned], timeout=ABANDON_AFTER_SECONDS)
    if returned.done() and not returned.cancelled():
        returned.exception()  # retrieved: its outcome was already recorded
    return returned.done()


def _failed(ctx: JobContext, failure: BaseException) -> str:
    """Log a job's exception with its traceback, as the operator does; return the one line."""
    error = _error_text(failure)
    ctx.log.error("run failed: %s", error, exc_info=failure)
    return error


def _error_text(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(error)).strip()
    if len(text) <= ERROR_TEXT_LIMIT:
        return text
    return text[: ERROR_TEXT_LIMIT - len(TRUNCATED)] + TRUNCATED
