"""A run's outcome tells the truth: only a body that returned is a success.

Errors raised before or around the job's call (the deadline, telemetry, the
context) fail the run with their message; a job's own ``CancelledError`` is a
plain failure; only the engine's own cancellations end a run otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from podcron.context import JobContext
from podcron.engine import ERROR_TEXT_LIMIT, ConcurrencyPolicy, Engine, RunFinished, RunStatus
from podcron.engine import runs as engine_runs
from podcron.engine.runs import TRUNCATED, error_text
from podcron.engine.timeouts import RunTimeout
from podcron.runrecord import format_time
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import Recorder, engine_on_loop_clock, spans_in_memory, spec

# On a fake loop clock (engine_support says how).
# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0, worker_threads=2)
    yield engine
    await engine.shutdown()


@pytest.mark.parametrize("seconds", [300_000_000_000, math.inf], ids=["huge", "infinite"])
async def test_a_timeout_beyond_the_calendar_runs_the_job_without_a_deadline(
    engine: Engine, seconds: float
) -> None:
    recorder = Recorder(engine)
    deadlines: list[datetime | None] = []

    async def job(ctx: JobContext) -> None:
        deadlines.append(ctx.deadline)

    engine.upsert(spec(job, every="1h", timeout_seconds=seconds))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert deadlines == [datetime.max.replace(tzinfo=UTC)], "the body ran, the deadline is far"
    assert recorder.finished()[0].status is RunStatus.SUCCESS


@pytest.mark.parametrize("seconds", [math.nan, 0.0, -5.0])
async def test_a_timeout_that_is_no_duration_fails_the_run_with_a_message(
    engine: Engine, seconds: float
) -> None:
    recorder = Recorder(engine)
    called = False

    async def job(ctx: JobContext) -> None:
        nonlocal called
        called = True

    engine.upsert(spec(job, every="1h", timeout_seconds=seconds))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    finished = recorder.finished()[0]
    assert not called
    assert finished.status is RunStatus.FAILURE
    assert finished.error == f"ValueError: timeoutSeconds must be positive, got {seconds}"
    history = engine.snapshot("ns/job").history
    assert (history.counts.succeeded, history.counts.failed) == (0, 1)


class BrokenSpans(RunTelemetry):
    """Telemetry whose run span cannot open."""

    def start_span(self, **_: Any) -> Any:
        raise RuntimeError("the span could not open")


async def test_an_error_around_the_call_is_a_failure_with_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engine_on_loop_clock(telemetry=BrokenSpans())
    recorder = Recorder(engine)
    called = False

    async def job(ctx: JobContext) -> None:
        nonlocal called
        called = True

    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert not called
    finished = recorder.finished()[0]
    assert finished.status is RunStatus.FAILURE
    assert finished.error == "RuntimeError: the span could not open"
    (line,) = [r for r in caplog.records if "around its call" in r.getMessage()]
    assert line.getMessage() == (
        "run of job ns/job failed around its call: RuntimeError: the span could not open"
    )
    assert line.exc_info is not None, "with its traceback"
    assert str(line.exc_info[1]) == "the span could not open"
    assert getattr(line, "job_id", None) == "ns/job"
    assert not engine.snapshot("ns/job").running
    await engine.shutdown()


async def test_a_job_that_raises_cancelled_error_itself_is_a_plain_failure(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        raise asyncio.CancelledError("the job gave up")

    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job")
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "podcron-run ns/job"]
    await recorder.until(lambda: len(recorder.finished()) == 1)
    finished = recorder.finished()[0]
    assert finished.status is RunStatus.FAILURE
    assert finished.error == "asyncio.exceptions.CancelledError: the job gave up"
    assert engine.snapshot("ns/job").history.counts.succeeded == 0
    await task  # nobody cancelled the run's task: it ends as any failed run's does
    assert not task.cancelled()


async def test_a_job_awaiting_a_task_someone_else_cancelled_is_a_plain_failure(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        helper = asyncio.create_task(asyncio.sleep(30))
        asyncio.get_running_loop().call_soon(helper.cancel)
        await helper

    engine.upsert(spec(job, every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
    for _ in range(3):
        engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 3)
    assert [e.status for e in recorder.finished()] == [RunStatus.FAILURE] * 3
    assert all("CancelledError" in (e.error or "") for e in recorder.finished())


async def test_a_run_task_cancelled_from_outside_the_engine_fails_and_stays_cancelled(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)
    started = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(30)

    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job")
    await started.wait()
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "podcron-run ns/job"]
    task.cancel()
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert recorder.finished()[0].status is RunStatus.FAILURE
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not engine.snapshot("ns/job").running


async def _replace_the_first_run(engine: Engine, recorder: Recorder, *, swallows: bool) -> None:
    """A Replace job's first run waits, and a second manual run replaces it.

    The first run stops at the cancellation, or swallows it and returns (it still did not
    finish its work); the second returns at once. Returns when both have finished.
    """
    first = True

    async def job(ctx: JobContext) -> None:
        nonlocal first
        if first:
            first = False
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if not swallows:
                    raise

    engine.upsert(spec(job, every="1h", concurrency_policy=ConcurrencyPolicy.REPLACE))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.started()) == 1)
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 2)


async def test_a_replaced_run_that_swallows_its_cancellation_is_still_a_failure(
    engine: Engine,
) -> None:
    recorder = Recorder(engine)
    await _replace_the_first_run(engine, recorder, swallows=True)
    replaced, replacement = recorder.finished()
    assert replaced.status is RunStatus.FAILURE
    assert (replaced.error or "").startswith("Replaced")
    assert replacement.status is RunStatus.SUCCESS


@pytest.mark.parametrize("swallows", [False, True], ids=["stops", "swallows-and-returns"])
async def test_a_replaced_runs_span_and_log_say_why_it_was_cut_short(
    caplog: pytest.LogCaptureFixture, swallows: bool
) -> None:
    exported, pipeline = spans_in_memory()
    telemetry = RunTelemetry(spans=pipeline)
    engine = engine_on_loop_clock(telemetry=telemetry, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    await _replace_the_first_run(engine, recorder, swallows=swallows)
    await engine.shutdown()
    pipeline.provider.shutdown()
    replaced = recorder.finished()[0]
    reason = "Replaced: a newer run started (concurrencyPolicy Replace)"
    assert (replaced.status, replaced.error) == (RunStatus.FAILURE, reason)
    replaced_span, replacement_span = exported.get_finished_spans()
    assert replacement_span.status.status_code is StatusCode.UNSET
    assert (replaced_span.status.status_code, replaced_span.status.description) == (
        StatusCode.ERROR,
        reason,
    )
    (event,) = replaced_span.events
    assert (event.attributes or {})["exception.type"] == "asyncio.exceptions.CancelledError"
    logged = [r.getMessage() for r in caplog.records if r.name == "podcron.job"]
    assert logged == [f"run cancelled: {reason}"], "the job's log says why, swallowed or not"


async def test_a_job_that_swallows_its_timeout_is_still_timed_out(engine: Engine) -> None:
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # swallowed: it did not finish its work in time

    engine.upsert(spec(job, every="1h", timeout_seconds=0.2))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    finished = recorder.finished()[0]
    assert finished.status is RunStatus.FAILURE
    assert finished.error == "TimeoutError: run exceeded 0.2s"


async def test_runs_cancelled_before_their_task_began_are_skipped_and_hold_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="podcron.engine")
    engine = engine_on_loop_clock(max_manual_runs=3, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, every="1h", concurrency_policy=ConcurrencyPolicy.REPLACE))
    engine.upsert(spec(job, name="gone", every="1h"))
    # All within one loop step: no run's task has begun when it is replaced or deleted.
    engine.trigger("ns/gone")
    engine.remove("ns/gone")
    engine.trigger("ns/job")
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 2)
    replaced, replacement = recorder.finished()
    assert (replaced.status, replacement.status) == (RunStatus.SKIPPED, RunStatus.SUCCESS)
    assert (replaced.error or "").startswith("Replaced")
    assert engine.running_count == 0
    assert len(recorder.started()) == 1
    (gone,) = [r for r in caplog.records if "ns/gone: the run due" in r.getMessage()]
    assert gone.getMessage().endswith(" did not start: Deleted: the ScheduledJob was deleted")
    (line,) = [r for r in caplog.records if "ns/job: the run due" in r.getMessage()]
    assert line.getMessage() == (
        f"job ns/job: the run due {replaced.scheduled_time.isoformat()} did not start:"
        f" {replaced.error}"
    )
    assert getattr(line, "job_id", None) == "ns/job"
    # Nothing leaked from the manual budget: three more runs are accepted at once.
    engine.upsert(spec(job, name="allow", every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW))
    for _ in range(3):
        engine.trigger("ns/allow")
    await recorder.until(lambda: len(recorder.finished("ns/allow")) == 3)
    await engine.shutdown()


async def test_a_run_without_a_timeout_enters_no_timeout_guard(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/performance.md: most runs have no timeout, and a guard armed for nothing still costs."""
    finished = asyncio.Event()
    engine.add_listener(lambda event: finished.set() if isinstance(event, RunFinished) else None)
    guards: list[float] = []

    class Counted(RunTimeout):
        __slots__ = ()

        def __init__(self, seconds: float, *, armed: bool = True) -> None:
            guards.append(seconds)
            super().__init__(seconds, armed=armed)

    async def job(ctx: JobContext) -> None:
        pass

    monkeypatch.setattr(engine_runs, "RunTimeout", Counted)
    engine.upsert(spec(job, name="plain", every="1h"))
    engine.upsert(spec(job, name="bounded", every="1h", timeout_seconds=30))
    for job_id in ("ns/plain", "ns/bounded"):
        finished.clear()
        engine.trigger(job_id)
        await finished.wait()  # no deadline of its own: it would be one more timeout
    assert guards == [30]


@pytest.mark.parametrize(
    ("timeout_seconds", "error", "exception", "swallows"),
    [
        (None, "ValueError: no such table", "ValueError", False),
        (2.0, "TimeoutError: run exceeded 2.0s", "TimeoutError", False),
        (2.0, "TimeoutError: run exceeded 2.0s", "TimeoutError", True),
    ],
    ids=["raised", "timed-out", "swallowed-its-timeout"],
)
async def test_a_failed_runs_span_and_log_say_why_and_carry_the_exception(
    caplog: pytest.LogCaptureFixture,
    timeout_seconds: float | None,
    error: str,
    exception: str,
    swallows: bool,
) -> None:
    exported, pipeline = spans_in_memory()
    telemetry = RunTelemetry(spans=pipeline)
    engine = engine_on_loop_clock(telemetry=telemetry)
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        if timeout_seconds is None:
            raise ValueError("no such table")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not swallows:
                raise

    engine.upsert(spec(job, every="1h", timeout_seconds=timeout_seconds))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    await engine.shutdown()
    pipeline.provider.shutdown()
    assert recorder.finished()[0].error == error
    (span,) = exported.get_finished_spans()
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, error)
    (event,) = span.events
    assert (event.name, (event.attributes or {})["exception.type"]) == ("exception", exception)
    # The job's log line carries the same exception, for its traceback.
    (line,) = [r for r in caplog.records if r.name == "podcron.job"]
    assert line.exc_info is not None
    assert type(line.exc_info[1]).__name__ == exception


@pytest.mark.parametrize(
    "length", [100, ERROR_TEXT_LIMIT, ERROR_TEXT_LIMIT + 1], ids=["short", "at-limit", "over"]
)
def test_an_error_text_is_cut_to_the_limit_and_says_so(length: int) -> None:
    text = error_text(ValueError("x" * (length - len("ValueError: "))))
    assert len(text) == min(length, ERROR_TEXT_LIMIT)
    if length > ERROR_TEXT_LIMIT:
        assert text.endswith("x" + TRUNCATED)
    else:
        assert text.endswith("x")


def test_an_error_with_notes_is_one_text_of_all_its_lines() -> None:
    error = ValueError("no such table")
    error.add_note("while loading shop.orders")
    assert error_text(error) == "ValueError: no such table\nwhile loading shop.orders"


async def test_a_runs_deadline_is_its_start_plus_its_timeout_in_utc(engine: Engine) -> None:
    recorder = Recorder(engine)
    deadlines: list[datetime | None] = []

    async def job(ctx: JobContext) -> None:
        deadlines.append(ctx.deadline)

    engine.upsert(spec(job, every="1h", timeout_seconds=30.0))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    (started,) = recorder.started()
    began = started.scheduled_time + timedelta(seconds=started.lateness_seconds)
    (deadline,) = deadlines
    assert deadline is not None
    assert deadline.tzinfo is UTC
    assert abs(deadline - began - timedelta(seconds=30)) < timedelta(milliseconds=1)


TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


async def test_a_manual_runs_body_runs_in_its_callers_trace_and_baggage(engine: Engine) -> None:
    """A caller's ``baggage`` header (the sidecar passes it on) reaches the job's code."""
    recorder = Recorder(engine)
    seen: list[tuple[object, object, int]] = []

    async def job(ctx: JobContext) -> None:
        seen.append(
            (
                baggage.get_baggage("tenant"),
                baggage.get_baggage("tenant", ctx.trace_context),
                trace.get_current_span().get_span_context().trace_id,
            )
        )

    engine.upsert(spec(job, every="1h"))
    engine.trigger(
        "ns/job",
        trace_headers={
            "traceparent": f"00-{TRACE_ID:032x}-00f067aa0ba902b7-01",
            "baggage": "tenant=acme",
        },
    )
    await recorder.until(lambda: len(recorder.finished()) == 1)
    assert seen == [("acme", "acme", TRACE_ID)]


@pytest.mark.looptime(False)  # a def body runs on a worker thread, on real time
async def test_a_def_body_runs_in_its_runs_trace_and_leaves_its_thread_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One thread: the second run's body runs where the first one's did.
    engine = engine_on_loop_clock(worker_threads=1)
    recorder = Recorder(engine)
    seen: list[int] = []

    def job(ctx: JobContext) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    engine.upsert(spec(job, every="1h"))
    engine.trigger(
        "ns/job", trace_headers={"traceparent": f"00-{TRACE_ID:032x}-00f067aa0ba902b7-01"}
    )
    await recorder.until(lambda: len(recorder.finished()) == 1)
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 2)
    await engine.shutdown()
    assert seen == [TRACE_ID, 0], "the caller's trace, then none"
    assert [r.message for r in caplog.records if r.name.startswith("opentelemetry")] == []


def _duration_exemplars(registry: CollectorRegistry, name: str) -> list[str]:
    """The trace ids on ``name``'s duration buckets, as the OpenMetrics exposition shows them."""
    return [
        sample.exemplar.labels["trace_id"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "podcron_job_duration_seconds_bucket"
        and sample.labels["name"] == name
        and sample.exemplar is not None
    ]


async def test_a_traced_failure_and_a_skipped_tick_are_recorded_as_what_they_are() -> None:
    """Status, the run history, the events and the metrics: a run and a tick that did not run."""
    exported, pipeline = spans_in_memory()
    registry = CollectorRegistry()
    telemetry = RunTelemetry(spans=pipeline, metrics=JobMetrics(registry))
    engine = engine_on_loop_clock(telemetry=telemetry, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()
        raise ValueError("boom")

    # Forbid, due every hour: the manual run is still on when the first tick comes.
    engine.upsert(spec(job, every="1h"))
    engine.trigger("ns/job")
    await recorder.until(lambda: recorder.count("job", RunStatus.SKIPPED) == 1, within=3600 + 5)
    release.set()
    await recorder.until(lambda: recorder.count("job", RunStatus.FAILURE) == 1)
    await engine.shutdown()
    pipeline.provider.shutdown()
    (span,) = exported.get_finished_spans()
    assert span.context is not None
    trace_id = span.context.trace_id
    skipped, failed = recorder.finished()
    assert all((e.namespace, e.name) == ("ns", "job") for e in recorder.events)
    assert skipped.duration_seconds == 0.0, "a tick that did not run took no time"
    failed_run, skipped_run = engine.runs("ns/job")
    assert (failed_run.trace_id, skipped_run.trace_id) == (trace_id, 0)
    assert skipped_run.scheduled_time == skipped.scheduled_time
    history = engine.snapshot("ns/job").history
    assert history.last_duration_seconds == pytest.approx(failed.duration_seconds)
    (failure,) = history.recent_failures
    assert failure.trace_id == trace_id
    assert failure.time.tzinfo is UTC
    assert failure.time.timestamp() == pytest.approx(failed_run.started, abs=1e-6)
    # The job's own series: both outcomes counted, only the run's duration, and its trace.
    labels = {"namespace": "ns", "name": "job"}
    for trigger, status in (("manual", "failure"), ("scheduled", "skipped")):
        outcome = labels | {"trigger": trigger, "status": status}
        assert registry.get_sample_value("podcron_job_runs_total", outcome) == 1
    assert registry.get_sample_value("podcron_job_duration_seconds_count", labels) == 1
    assert registry.get_sample_value("podcron_job_duration_seconds_sum", labels) == pytest.approx(
        failed.duration_seconds
    )
    assert _duration_exemplars(registry, "job") == [f"{trace_id:032x}"]


async def test_a_scheduled_runs_span_names_its_run_and_its_lateness_leads_to_its_trace() -> None:
    """What a trace backend shows of a run, and the lateness bucket's way to that trace."""
    exported, pipeline = spans_in_memory()
    registry = CollectorRegistry()
    telemetry = RunTelemetry(spans=pipeline, metrics=JobMetrics(registry))
    engine = engine_on_loop_clock(telemetry=telemetry)
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job, every="1h"))
    await recorder.until(lambda: len(recorder.finished()) == 1, within=3600 + 5)
    await engine.shutdown()
    pipeline.provider.shutdown()
    (started,) = recorder.started()
    assert recorder.finished()[0].status is RunStatus.SUCCESS
    (span,) = exported.get_finished_spans()
    assert span.context is not None
    assert dict(span.attributes or {}) == {
        "podcron.job.id": "ns/job",
        "podcron.job.trigger": "scheduled",
        "podcron.job.entry_point": "tests:job",
        "podcron.job.scheduled_time": format_time(started.scheduled_time),
    }
    (exemplar,) = [
        sample.exemplar
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "podcron_job_schedule_lateness_seconds_bucket"
        and sample.exemplar is not None
    ]
    assert exemplar.labels == {"trace_id": f"{span.context.trace_id:032x}"}
    assert exemplar.value == pytest.approx(started.lateness_seconds, abs=1e-6)
