"""``podcron.testing``: what a job author's unit test gets, and the operator's rules for one run."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from podcron import JobContext
from podcron.engine import RunStatus
from podcron.errors import InvalidSchedule
from podcron.jobconfig import ConfigSource
from podcron.schedules import Daily
from podcron.testing import JobHarness, harness, next_runs

NOW = datetime(2026, 3, 30, 2, 0, tzinfo=UTC)


def test_the_context_says_what_a_run_would() -> None:
    run = harness(args={"n": 1}, now=NOW, timeout=30, namespace="shop", name="report")
    ctx = run.ctx
    assert (ctx.job_id, ctx.namespace, ctx.name) == ("shop/report", "shop", "report")
    assert ctx.args == {"n": 1}
    assert ctx.scheduled_time == NOW
    assert ctx.deadline == NOW + timedelta(seconds=30)
    assert not ctx.cancelled
    assert ctx.trace_headers() == {}


def test_a_jobs_context_is_read_only() -> None:
    ctx = harness(args={"n": 1}).ctx
    with pytest.raises(AttributeError):
        ctx.args = {}  # type: ignore[misc]
    assert ctx.args == {"n": 1}


def test_without_a_timeout_there_is_no_deadline() -> None:
    assert harness().ctx.deadline is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: harness(now=datetime(2026, 1, 1)),
        lambda: harness(scheduled_time=datetime(2026, 1, 1)),
        lambda: harness(timeout=0),
        lambda: harness(timeout=float("nan")),
    ],
    ids=["naive-now", "naive-scheduled-time", "zero-timeout", "nan-timeout"],
)
def test_bad_values_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=r"timezone-aware|positive number"):
        make()


def test_a_failure_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def fails(ctx: JobContext) -> None:
        raise KeyError("rows")

    run = harness()
    outcome = run.run(fails)
    assert outcome.status is RunStatus.FAILURE
    assert outcome.error == "KeyError: 'rows'"
    assert isinstance(outcome.exception, KeyError)
    (record,) = run.records
    assert record.getMessage() == "run failed: KeyError: 'rows'"
    assert record.exc_info is not None
    assert record.job_id == "default/job"  # type: ignore[attr-defined]
    # Also passed on, for pytest's own log capture and report.
    assert "run failed: KeyError: 'rows'" in caplog.text


def test_harnesses_keep_their_own_records() -> None:
    first, second = harness(), harness()
    first.ctx.log.info("one")
    second.ctx.log.warning("two")
    assert first.messages == ["one"]
    assert second.messages == ["two"]


def test_an_async_job_past_its_timeout_is_cancelled_and_fails() -> None:
    async def hangs(ctx: JobContext) -> None:
        await asyncio.Event().wait()

    run = harness(timeout=0.05)
    outcome = run.run(hangs)
    assert outcome.error == "TimeoutError: run exceeded 0.05s"
    assert isinstance(outcome.exception, TimeoutError)
    assert run.ctx.cancelled
    assert run.messages == ["run timed out after 0.05s"]


def test_an_async_job_that_swallows_its_timeout_still_timed_out() -> None:
    async def stubborn(ctx: JobContext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    outcome = harness(timeout=0.05).run(stubborn)
    assert outcome.error == "TimeoutError: run exceeded 0.05s"


def test_the_jobs_own_timeout_error_is_a_failure_not_its_deadline() -> None:
    async def calls_a_slow_service(ctx: JobContext) -> None:
        raise TimeoutError("the service did not answer")

    outcome = harness(timeout=60).run(calls_a_slow_service)
    assert outcome.error == "TimeoutError: the service did not answer"


def test_a_thread_job_that_ignores_its_timeout_fails_at_the_deadline() -> None:
    release = threading.Event()

    def blocks(ctx: JobContext) -> None:
        release.wait()

    run = harness(timeout=0.05)
    try:
        outcome = run.run(blocks)
    finally:
        release.set()
    assert outcome.error == "TimeoutError: run exceeded 0.05s"
    assert outcome.thread_still_running
    assert run.ctx.cancelled


def test_a_thread_job_that_checks_cancelled_stops_at_the_deadline() -> None:
    def polls(ctx: JobContext) -> None:
        stop = threading.Event()
        while not ctx.cancelled:
            stop.wait(0.005)

    outcome = harness(timeout=0.05).run(polls)
    assert outcome.error == "TimeoutError: run exceeded 0.05s"
    assert not outcome.thread_still_running


@pytest.mark.parametrize("kind", ["async", "async-swallows", "thread"])
def test_cancel_midway_fails_the_run_with_its_reason(kind: str) -> None:
    run: JobHarness

    async def async_job(ctx: JobContext) -> None:
        run.cancel("Replaced: a newer run started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if kind == "async":
                raise

    def thread_job(ctx: JobContext) -> None:
        run.cancel("Replaced: a newer run started")  # from the job's own thread
        stop = threading.Event()
        while not ctx.cancelled:
            stop.wait(0.005)

    run = harness()
    outcome = run.run(thread_job if kind == "thread" else async_job)
    assert outcome.status is RunStatus.FAILURE
    assert outcome.error == "Replaced: a newer run started"
    assert run.ctx.cancelled
    assert run.messages[-1] == "run cancelled: Replaced: a newer run started"


@pytest.mark.parametrize("kind", ["async", "thread"])
def test_cancelled_before_the_run_the_job_is_never_called(kind: str) -> None:
    called = []

    async def async_job(ctx: JobContext) -> None:
        called.append(ctx)

    def thread_job(ctx: JobContext) -> None:
        called.append(ctx)

    run = harness()
    run.cancel("Deleted: the ScheduledJob was deleted")
    outcome = run.run(async_job if kind == "async" else thread_job)
    assert outcome.status is RunStatus.SKIPPED
    assert outcome.error == "Deleted: the ScheduledJob was deleted"
    assert called == []


def test_a_cancelled_error_of_the_jobs_own_is_a_failure() -> None:
    async def raises(ctx: JobContext) -> None:
        raise asyncio.CancelledError

    assert harness().run(raises).error == "asyncio.exceptions.CancelledError"


def test_a_callable_object_with_an_async_call_runs_on_the_loop() -> None:
    class Job:
        async def __call__(self, ctx: JobContext) -> None:
            ctx.log.info("on thread %s", threading.current_thread() is threading.main_thread())

    run = harness()
    assert run.run(Job()).succeeded
    assert run.messages == ["on thread True"]


async def test_in_an_async_test_await_run_async() -> None:
    async def job(ctx: JobContext) -> None:
        ctx.log.info("ran")

    run = harness()
    with pytest.raises(RuntimeError, match=r"await harness\.run_async"):
        run.run(job)
    assert (await run.run_async(job)).succeeded
    assert run.messages == ["ran"]


async def test_cancelling_the_caller_cancels_the_run_and_reaches_the_caller() -> None:
    started = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    run = harness()
    caller = asyncio.ensure_future(run.run_async(job))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert run.ctx.cancelled


def test_a_harness_runs_its_job_once() -> None:
    run = harness()
    run.run(lambda ctx: None)
    with pytest.raises(RuntimeError, match="runs its job once"):
        run.run(lambda ctx: None)


def test_next_runs_follow_the_time_zone_across_a_dst_change() -> None:
    ticks = next_runs(
        {"daily": {"at": "02:30"}},
        datetime(2026, 3, 28, 12, tzinfo=UTC),
        2,
        time_zone="Europe/Berlin",
    )
    # 02:30 does not exist on 29 March in Berlin: it runs as the clocks reach 03:00.
    assert ticks == [
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_next_runs_of_a_schedule_object_and_of_one_that_never_fires() -> None:
    assert next_runs(Daily(at="06:00"), NOW, 1) == [datetime(2026, 3, 30, 6, 0, tzinfo=UTC)]
    assert next_runs({"cron": "0 0 30 2 *"}, NOW, 3) == []


def test_next_runs_refuses_what_the_operator_refuses() -> None:
    with pytest.raises(InvalidSchedule, match=r"spec\.schedule\.daily\.at"):
        next_runs({"daily": {"at": "25:00"}}, NOW)


def test_logs_go_to_the_podcron_job_logger_when_not_captured(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = harness(capture_logs=False)
    with caplog.at_level(logging.INFO, logger="podcron.job"):
        run.ctx.log.info("uncaptured")
    assert run.records == []
    assert [record.name for record in caplog.records] == ["podcron.job"]


def test_a_job_gets_the_resources_and_config_the_test_gives(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "greeting").write_text("bonjour")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("s3cr3t")
    source = ConfigSource(tmp_path / "config", tmp_path / "secrets")
    source.load()
    pool = ["connection"]
    seen: list[object] = []

    async def job(ctx: JobContext) -> None:
        seen.extend(
            [ctx.resource("db", list), ctx.config.text("greeting"), str(ctx.config["token"])]
        )

    outcome = harness(resources={"db": pool}, config=source.snapshot()).run(job)
    assert outcome.succeeded
    assert seen == [pool, "bonjour", "********"]
