"""A schedule with no further run: registered, shown with no next run time, never armed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from podcron.context import JobContext, Trigger
from podcron.engine import Engine, History, RunStatus

from .engine_support import Recorder, engine_on_loop_clock, spec

# On a fake loop clock (engine_support says how).
# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]

# 30 February: valid, as in Kubernetes CronJob, and never comes.
NO_SUCH_DATE = {"cron": "0 0 30 2 *"}


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
