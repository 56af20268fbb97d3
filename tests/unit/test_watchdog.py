"""The event-loop watchdog: a blocking async job is named, and the loop's lag is measured."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext
from podcron.engine import ConcurrencyPolicy, Engine
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import Recorder, spec

# Long enough that the watchdog thread, woken every 0.25 s, sees it on a busy machine.
BLOCK_SECONDS = 1.5


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "podcron.watchdog"]


async def test_an_async_job_that_blocks_the_loop_is_named_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    engine = Engine(
        shutdown_timeout_seconds=1.0, telemetry=RunTelemetry(metrics=JobMetrics(registry))
    )
    recorder = Recorder(engine)

    async def blocker(ctx: JobContext) -> None:
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - the mistake this test is about

    engine.upsert(
        spec(blocker, name="blocker", every="1h", concurrency_policy=ConcurrencyPolicy.ALLOW)
    )
    with caplog.at_level(logging.WARNING, logger="podcron.watchdog"):
        for runs in (1, 2):
            engine.trigger("ns/blocker")
            await recorder.until(lambda: len(recorder.finished()) == runs)  # noqa: B023
    (warning,) = _warnings(caplog)
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("job ns/blocker has held the event loop for")
    assert getattr(warning, "job_id", None) == "ns/blocker"
    # The heartbeat that waited for the job shows as lag beyond a second.
    lag_count = registry.get_sample_value("podcron_event_loop_lag_seconds_count")
    within_a_second = registry.get_sample_value(
        "podcron_event_loop_lag_seconds_bucket", {"le": "1.0"}
    )
    assert lag_count is not None
    assert within_a_second is not None
    assert lag_count - within_a_second >= 1
    await engine.shutdown()


async def test_a_busy_loop_blames_nobody_and_a_task_that_is_no_job_is_named_as_such(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Engine(shutdown_timeout_seconds=1.0)
    engine.upsert(spec(lambda ctx: None, every="1h"))  # the watchdog starts with the first job

    async def short_step() -> None:
        time.sleep(0.002)  # noqa: ASYNC251 - each step short, together a second

    async def holder() -> None:
        time.sleep(BLOCK_SECONDS)  # noqa: ASYNC251 - one step holding the loop

    with caplog.at_level(logging.WARNING, logger="podcron.watchdog"):
        # 750 tasks ready at once: one pass of the loop runs them all, the heartbeat
        # waits about as long as for the holder below, yet no task held the loop.
        await asyncio.gather(*(asyncio.create_task(short_step()) for _ in range(750)))
        assert _warnings(caplog) == []
        await asyncio.create_task(holder(), name="not-a-job")
    (warning,) = _warnings(caplog)
    assert warning.getMessage().startswith("task 'not-a-job', not a job's run, has held")
    await engine.shutdown()


async def test_without_jobs_there_is_no_watchdog() -> None:
    engine = Engine()
    await asyncio.sleep(0)
    assert engine._watchdog is None
    await engine.shutdown()


def _watchdog_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "podcron-watchdog" and t.is_alive()}


@pytest.mark.parametrize("watchdog", [True, False])
async def test_an_engine_starts_one_watchdog_however_many_jobs_and_none_when_told(
    watchdog: bool,
) -> None:
    before = _watchdog_threads()
    engine = Engine(shutdown_timeout_seconds=1.0, loop_watchdog=watchdog)
    try:
        for name in ("a", "b", "c"):
            engine.upsert(spec(lambda ctx: None, name=name, every="1h"))
        assert len(_watchdog_threads() - before) == (1 if watchdog else 0)
    finally:
        await engine.shutdown()
