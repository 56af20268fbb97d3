"""A skipped tick is counted, and never hides how the last run ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext, Trigger
from podcron.engine import ConcurrencyPolicy, Engine, JobEvent, RunFinished, RunStatus
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import Recorder, engine_on_loop_clock, spec

# On a fake loop clock (engine_support says how).
# Slow callbacks and unretrieved task exceptions fail these tests (tests/unit/conftest.py).
pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]


@pytest.fixture
async def engine() -> Any:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    yield engine
    await engine.shutdown()


@pytest.mark.parametrize("outcome", [RunStatus.SUCCESS, RunStatus.FAILURE])
async def test_skipped_ticks_keep_the_last_runs_status(engine: Engine, outcome: RunStatus) -> None:
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        if ctx.trigger is Trigger.MANUAL:
            if outcome is RunStatus.FAILURE:
                raise ValueError("boom")
            return
        await release.wait()  # the scheduled run lasts until released: later ticks skip

    engine.upsert(spec(job))  # every 1s, concurrencyPolicy Forbid
    engine.trigger("ns/job")
    await recorder.until(lambda: recorder.count("job", outcome) == 1)
    ran = len(recorder.finished())
    # A tick skipped after that run, while the scheduled run lasts.
    await recorder.until(
        lambda: any(e.status is RunStatus.SKIPPED for e in recorder.finished()[ran:])
    )
    history = engine.snapshot("ns/job").history
    assert history.last_status is outcome
    assert history.counts.skipped >= 1
    assert history.counts.total == 1
    release.set()


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (ConcurrencyPolicy.FORBID, "concurrencyPolicy Forbid"),
        (
            ConcurrencyPolicy.REPLACE,
            "the run it would replace has not stopped yet (concurrencyPolicy Replace)",
        ),
    ],
    ids=["forbid", "replace"],
)
async def test_a_skipped_tick_says_why(engine: Engine, policy: ConcurrencyPolicy, why: str) -> None:
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        # Lasts until released, cancelled or not: a run Replace cancels does not stop.
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    engine.upsert(spec(job, concurrency_policy=policy))  # every 1s
    try:
        await recorder.until(lambda: recorder.count("job", RunStatus.SKIPPED) == 1)
        (skipped,) = [e for e in recorder.finished() if e.status is RunStatus.SKIPPED]
        assert skipped.error == why
    finally:
        release.set()  # else the run that ignores cancellation would hold up shutdown


async def test_a_job_removed_by_a_listener_in_mid_tick_leaves_the_jobs_due_after_it_running() -> (
    None
):
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def busy(ctx: JobContext) -> None:
        await release.wait()

    async def quick(ctx: JobContext) -> None:
        pass

    def remove_on_skip(event: JobEvent) -> None:
        # Told synchronously of the busy job's skipped tick, while the same tick's batch
        # still holds the jobs due after it.
        if isinstance(event, RunFinished) and event.status is RunStatus.SKIPPED:
            engine.remove("ns/removed")

    engine.add_listener(remove_on_skip)
    try:
        engine.upsert(spec(busy, "busy"))  # Forbid: its second tick is skipped
        engine.upsert(spec(quick, "removed"))
        engine.upsert(spec(quick, "kept"))
        await recorder.until(lambda: len(recorder.finished("ns/kept")) >= 3)
        assert len(recorder.finished("ns/removed")) == 1
    finally:
        release.set()
        await engine.shutdown()


class MetricsFailingFor(JobMetrics):
    """Metrics with a bug that shows for one job: recording its skipped ticks raises."""

    def __init__(self, name: str) -> None:
        super().__init__(CollectorRegistry())
        self._failing = name

    def run_recorded(self, namespace: str, name: str, **outcome: Any) -> None:
        if name == self._failing and outcome["status"] is RunStatus.SKIPPED:
            raise RuntimeError(f"a bug in the metrics of {name}")
        super().run_recorded(namespace, name, **outcome)


async def test_a_tick_whose_dispatch_fails_is_logged_and_the_other_jobs_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = engine_on_loop_clock(
        shutdown_timeout_seconds=1.0, telemetry=RunTelemetry(metrics=MetricsFailingFor("broken"))
    )
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def busy(ctx: JobContext) -> None:
        await release.wait()

    async def quick(ctx: JobContext) -> None:
        pass

    try:
        # Its second tick is skipped (Forbid), and recording the skip raises in dispatch.
        engine.upsert(spec(busy, "broken"))
        engine.upsert(spec(quick, "healthy"))
        with caplog.at_level(logging.ERROR, logger="podcron.engine"):
            await recorder.until(lambda: len(recorder.finished("ns/healthy")) >= 3)
        failures = [r for r in caplog.records if r.name == "podcron.engine"]
        assert failures
        assert {r.getMessage() for r in failures} == {"dispatching job ns/broken failed"}
        assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)
    finally:
        release.set()
        await engine.shutdown()
