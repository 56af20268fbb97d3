"""The engine's timer follows its wall clock when that is set to other time (the API server's).

On a fake loop clock (``looptime``), the engine's wall clock is the loop's plus an offset the
test moves, as :class:`~podcron.ha.servertime.ServerTime` moves an
:class:`~podcron.engine.clock.OffsetClock`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from podcron.context import JobContext, Trigger
from podcron.engine import Engine, History, RunStatus
from podcron.telemetry.metrics import JobMetrics
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import Recorder, spec

pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]

#: Loop time 0 reads as this wall-clock time: a whole minute, so a job every 60 s is due at 60.
ORIGIN = 1_800_000_000.0
THE_JOB = {"namespace": "ns", "name": "job"}  # the labels of "ns/job"'s series


class MovableClock:
    """The loop's clock plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset = ORIGIN

    def wall(self) -> float:
        return asyncio.get_running_loop().time() + self.offset


async def _job(ctx: JobContext) -> None:
    pass


@contextlib.asynccontextmanager
async def _engine_reading(
    wall: float, registry: CollectorRegistry | None = None
) -> AsyncIterator[tuple[Engine, MovableClock, Recorder]]:
    """An engine whose wall clock reads ``wall`` now; metrics into ``registry`` if given."""
    clock = MovableClock()
    telemetry = None if registry is None else RunTelemetry(metrics=JobMetrics(registry))
    engine = Engine(clock=clock, loop_watchdog=False, telemetry=telemetry)
    clock.offset = wall - asyncio.get_running_loop().time()
    try:
        yield engine, clock, Recorder(engine)
    finally:
        await engine.shutdown()


@pytest.mark.parametrize("moved", [-20.0, 20.0])
async def test_a_moved_clock_rearms_the_timer_by_the_new_time(moved: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with _engine_reading(ORIGIN) as (engine, clock, recorder):
        engine.upsert(spec(_job, every="60s"))
        await asyncio.sleep(10)  # the timer is set for loop time start + 60
        clock.offset += moved
        engine.clock_moved()
        await recorder.until(lambda: bool(recorder.started()), within=120)
        # Due at wall time ORIGIN + 60, which the moved clock reads at loop time 60 - moved.
        assert loop.time() - start == pytest.approx(60 - moved, abs=0.01)


async def test_without_the_call_the_timer_keeps_its_old_deadline() -> None:
    """What clock_moved is for: the timer waits on the loop's clock, blind to the move."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with _engine_reading(ORIGIN) as (engine, clock, recorder):
        engine.upsert(spec(_job, every="60s"))
        await asyncio.sleep(10)
        clock.offset += 20
        await recorder.until(lambda: bool(recorder.started()), within=120)
        assert loop.time() - start == pytest.approx(60, abs=0.01)


async def test_ticks_a_late_timer_passes_over_start_once_and_are_counted_missed() -> None:
    registry = CollectorRegistry()
    async with _engine_reading(ORIGIN, registry) as (engine, clock, recorder):
        engine.upsert(spec(_job, every="10s"))
        await recorder.until(lambda: len(recorder.started()) == 1, within=30)
        # The timer, set for the next tick, fires 35 s late as the wall clock reads it (a
        # stalled loop): the tick it was set for starts, the three after it do not.
        clock.offset += 35
        await recorder.until(lambda: len(recorder.started()) == 2, within=30)
        first, late = (run.scheduled_time.timestamp() for run in recorder.started())
        assert late - first == 10
        assert registry.get_sample_value("podcron_ticks_missed_total", THE_JOB) == 3
        following = engine.snapshot("ns/job").next_run_time
        assert following is not None
        assert following.timestamp() == late + 40


async def test_a_tick_due_just_as_the_late_timer_fires_is_passed_over_too() -> None:
    registry = CollectorRegistry()
    async with _engine_reading(ORIGIN, registry) as (engine, clock, recorder):
        engine.upsert(spec(_job, every="10s"))
        await recorder.until(lambda: len(recorder.started()) == 1, within=30)
        # The timer set for ORIGIN + 20 fires when the wall clock reads ORIGIN + 30: that
        # tick is as late as the ones a longer stall passes over (at or before now).
        clock.offset += 10
        await recorder.until(lambda: len(recorder.started()) == 2, within=30)
        started = [run.scheduled_time.timestamp() for run in recorder.started()]
        assert started == [ORIGIN + 10, ORIGIN + 20]
        assert registry.get_sample_value("podcron_ticks_missed_total", THE_JOB) == 1
        following = engine.snapshot("ns/job").next_run_time
        assert following is not None
        assert following.timestamp() == ORIGIN + 40


async def test_a_missed_tick_exactly_as_late_as_its_starting_deadline_is_caught_up() -> None:
    history = History(
        last_run_time=datetime.fromtimestamp(ORIGIN - 60, UTC), last_status=RunStatus.SUCCESS
    )
    # Registered 30 s after the tick of ORIGIN, with a 30 s starting deadline.
    async with _engine_reading(ORIGIN + 30) as (engine, _clock, recorder):
        engine.upsert(spec(_job, every="60s", starting_deadline_seconds=30), history=history)
        await recorder.until(lambda: len(recorder.started()) == 1, within=5)
        (run,) = recorder.started()
        assert (run.trigger, run.scheduled_time.timestamp()) == (Trigger.CATCH_UP, ORIGIN)


async def test_a_spec_change_keeps_a_due_tick_the_timer_has_not_reached() -> None:
    async with _engine_reading(ORIGIN) as (engine, clock, recorder):
        engine.upsert(spec(_job, every="10s"))
        await recorder.until(lambda: len(recorder.started()) == 1, within=30)
        # The wall clock reads 0.5 s past the next tick before the loop runs its timer (a
        # loop behind by that much), and a field other than the schedule changes meanwhile.
        clock.offset += 10.5
        engine.upsert(spec(_job, every="10s", timeout_seconds=5.0))
        await recorder.until(lambda: len(recorder.started()) == 2, within=30)
        first, second = (run.scheduled_time.timestamp() for run in recorder.started())
        assert second - first == 10
