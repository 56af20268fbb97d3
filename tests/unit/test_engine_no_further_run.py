"""A schedule with no further run: registered, shown with no next run time, never armed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext, Trigger
from podcron.engine import Engine, History, RunStatus
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import Recorder, engine_on_loop_clock, spec

# On a fake loop clock (engine_support says how).
# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]

# 30 February: valid, as in Kubernetes CronJob, and never comes.
NO_SUCH_DATE = {"cron": "0 0 30 2 *"}


class EndOfTime:
    """A wall clock that reads ``start`` when the test begins and moves with the loop's."""

    def __init__(self, start: float) -> None:
        self._offset = start - asyncio.get_running_loop().time()

    def wall(self) -> float:
        return asyncio.get_running_loop().time() + self._offset


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0, worker_threads=2)
    yield engine
    await engine.shutdown()


async def job(ctx: JobContext) -> None:
    pass


async def test_no_further_run_leaves_the_job_unarmed_and_manual_runs_work(engine: Engine) -> None:
    recorder = Recorder(engine)
    # With history and a starting deadline, catch-up must find no missed tick either.
    history = History(last_run_time=datetime(2024, 1, 1, tzinfo=UTC))
    snapshot = engine.upsert(
        spec(job, "never", schedule=NO_SUCH_DATE, starting_deadline_seconds=3600),
        history=history,
    )
    assert snapshot.next_run_time is None
    engine.upsert(spec(job, "ticking"))  # every second, next to it

    await recorder.until(lambda: len(recorder.finished("ns/ticking")) >= 2)
    assert recorder.finished("ns/never") == []
    assert engine.snapshot("ns/never").next_run_time is None

    engine.trigger("ns/never")
    await recorder.until(lambda: len(recorder.finished("ns/never")) == 1)
    (run,) = recorder.finished("ns/never")
    assert run.status is RunStatus.SUCCESS
    assert [e.trigger for e in recorder.started("ns/never")] == [Trigger.MANUAL]
    assert engine.snapshot("ns/never").next_run_time is None


async def test_a_new_schedule_arms_a_job_that_had_no_further_run(engine: Engine) -> None:
    engine.upsert(spec(job, "later", schedule=NO_SUCH_DATE))
    assert engine.snapshot("ns/later").next_run_time is None
    snapshot = engine.upsert(spec(job, "later", schedule={"cron": "@hourly"}))
    assert snapshot.next_run_time is not None
    assert snapshot.next_run_time.minute == 0


async def test_the_last_tick_before_year_10000_runs_and_leaves_no_next_one() -> None:
    last_tick = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    registry = CollectorRegistry()
    engine = Engine(
        clock=EndOfTime(last_tick - 1.5),
        loop_watchdog=False,
        telemetry=RunTelemetry(metrics=JobMetrics(registry)),
    )
    recorder = Recorder(engine)
    try:
        engine.upsert(spec(job, "last"))
        await recorder.until(lambda: len(recorder.finished()) == 2)
        assert [e.scheduled_time.timestamp() for e in recorder.started()] == [
            last_tick - 1,
            last_tick,
        ]
        assert engine.snapshot("ns/last").next_run_time is None
        assert engine.next_wakeup is None
        interval = registry.get_sample_value(
            "podcron_job_interval_seconds", {"namespace": "ns", "name": "last"}
        )
        assert interval is None, "no next tick: no interval"
    finally:
        await engine.shutdown()
