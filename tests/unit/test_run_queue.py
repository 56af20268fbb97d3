"""Waiting for a run slot is queueing: lateness, not duration; queued, not running."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext, Trigger
from podcron.engine import ConcurrencyPolicy, RunStatus
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import LoopClock, Recorder, engine_on_loop_clock, spec

# On a fake loop clock (engine_support says how).
# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]


async def test_a_run_waiting_for_a_slot_is_queued_late_and_its_duration_is_its_body() -> None:
    registry = CollectorRegistry()
    clock = LoopClock()
    engine = engine_on_loop_clock(
        clock,
        max_concurrent_runs=1,
        shutdown_timeout_seconds=1.0,
        telemetry=RunTelemetry(metrics=JobMetrics(registry)),
    )
    recorder = Recorder(engine)
    release = asyncio.Event()
    body_started: list[float] = []
    deadlines: list[float] = []

    async def hog(ctx: JobContext) -> None:
        await release.wait()

    async def late(ctx: JobContext) -> None:
        body_started.append(clock.wall())
        assert ctx.deadline is not None
        deadlines.append(ctx.deadline.timestamp())

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name)

    engine.upsert(spec(hog, name="hog", every="1s"))
    await recorder.until(lambda: len(recorder.started("ns/hog")) == 1)
    engine.upsert(spec(late, name="late", every="1s", timeout_seconds=30))
    # A skipped tick of "late" means its first run has waited at least one interval.
    await recorder.until(lambda: recorder.count("late", RunStatus.SKIPPED) >= 1)
    assert recorder.started("ns/late") == [], "waiting for a slot is not running"
    assert gauge("podcron_jobs_running") == 1, "running means running: the hog only"
    assert gauge("podcron_jobs_queued") == 1
    release.set()
    await recorder.until(lambda: recorder.count("late", RunStatus.SUCCESS) >= 1)
    (started, *_) = recorder.started("ns/late")
    finished = next(e for e in recorder.finished("ns/late") if e.status is RunStatus.SUCCESS)
    assert started.scheduled_time == finished.scheduled_time
    assert started.lateness_seconds >= 1.0, "the wait counts as lateness"
    assert started.lateness_seconds <= body_started[0] - started.scheduled_time.timestamp()
    # The duration is the body's own time: no more than since the body started.
    body_start = started.scheduled_time.timestamp() + started.lateness_seconds
    assert finished.duration_seconds <= clock.wall() - body_start
    # The timeout clock starts with the body too.
    assert deadlines[0] - 30 == pytest.approx(body_start, abs=1e-5)
    lateness_sum = gauge("podcron_job_schedule_lateness_seconds_sum")
    assert lateness_sum is not None
    assert lateness_sum >= started.lateness_seconds
    await engine.shutdown()
    assert gauge("podcron_jobs_running") == 0
    assert gauge("podcron_jobs_queued") == 0


async def test_allow_queues_at_most_one_tick_per_job() -> None:
    registry = CollectorRegistry()
    engine = engine_on_loop_clock(
        max_concurrent_runs=1,
        shutdown_timeout_seconds=1.0,
        telemetry=RunTelemetry(metrics=JobMetrics(registry)),
    )
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def hog(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(hog, name="hog", every="1s"))
    await recorder.until(lambda: len(recorder.started("ns/hog")) == 1)
    engine.upsert(spec(hog, name="busy", every="1s", concurrency_policy=ConcurrencyPolicy.ALLOW))
    await recorder.until(lambda: recorder.count("busy", RunStatus.SKIPPED) >= 2)
    assert {e.error for e in recorder.finished("ns/busy")} == {
        "a run of it still waits for a run slot (concurrencyPolicy Allow)"
    }
    assert engine.snapshot("ns/busy").running
    assert registry.get_sample_value("podcron_jobs_queued") == 1
    # Manual runs are not held back by the queued tick: they have their own budget.
    engine.trigger("ns/busy")
    await recorder.until(lambda: len(recorder.started("ns/busy")) == 1)
    assert recorder.started("ns/busy")[0].trigger is Trigger.MANUAL
    release.set()
    await engine.shutdown()


async def test_a_queued_run_cancelled_from_outside_is_a_tick_that_did_not_start() -> None:
    engine = engine_on_loop_clock(max_concurrent_runs=1, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def hog(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(hog, name="hog", every="1s"))
    await recorder.until(lambda: len(recorder.started("ns/hog")) == 1)
    engine.upsert(spec(hog, name="late", every="1h"))
    # Queued behind the hog's slot: its task is waiting, its body has not started. (The
    # hog's ticks, skipped every second, are the events that recheck this.)
    await recorder.until(lambda: engine.snapshot("ns/late").running, within=3600 + 5)
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "podcron-run ns/late"]
    task.cancel()
    await recorder.until(lambda: len(recorder.finished("ns/late")) == 1)
    (finished,) = recorder.finished("ns/late")
    assert (finished.status, finished.error) == (RunStatus.SKIPPED, "cancelled before it started")
    assert recorder.started("ns/late") == []
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not engine.snapshot("ns/late").running
    release.set()
    await engine.shutdown()
