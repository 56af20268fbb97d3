"""Runs due at one instant all start before any of them is recorded (engine/burst.py).

More than ``DISPATCH_BATCH`` jobs due together start over several timer callbacks;
a run whose body returned in between waits to be recorded until they all have.
"""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from podcron.context import JobContext, Trigger
from podcron.engine import (
    DISPATCH_BATCH,
    Engine,
    JobEvent,
    RunFinished,
    RunStarted,
    RunStatus,
)
from podcron.engine.burst import HELD_BATCHES_AT_MOST, Burst
from podcron.engine.runner import PREPARE_AHEAD_SECONDS
from podcron.telemetry.run_telemetry import RunTelemetry

from .engine_support import (
    LoopClock,
    Recorder,
    SpansMade,
    engine_on_loop_clock,
    spans_in_memory,
    spec,
)

pytestmark = [pytest.mark.looptime]

JOBS = 4 * DISPATCH_BATCH


async def _noop(ctx: JobContext) -> None:
    pass


def _first_instant(events: list[JobEvent]) -> list[JobEvent]:
    """The starts and outcomes of the runs due at the first instant any run was due."""
    runs = [e for e in events if isinstance(e, RunStarted | RunFinished)]
    first = runs[0].scheduled_time
    return [e for e in runs if e.scheduled_time == first]


def _started_before_first_outcome(events: list[JobEvent]) -> int:
    kinds = [type(e) for e in _first_instant(events)]
    return kinds.index(RunFinished)


async def test_runs_due_together_all_start_before_the_first_is_recorded() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    for index in range(JOBS):
        engine.upsert(spec(_noop, f"job{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    assert _started_before_first_outcome(recorder.events) == JOBS
    outcomes = [e for e in _first_instant(recorder.events) if isinstance(e, RunFinished)]
    assert len(outcomes) == JOBS
    assert {e.status for e in outcomes} == {RunStatus.SUCCESS}
    await engine.shutdown()


async def test_the_runs_of_a_burst_start_with_the_garbage_collector_off() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    collecting: list[bool] = []
    on_at_outcome: list[bool] = []

    async def body(ctx: JobContext) -> None:
        collecting.append(gc.isenabled())

    def on_event(event: JobEvent) -> None:
        if isinstance(event, RunFinished):
            on_at_outcome.append(gc.isenabled())

    engine.add_listener(on_event)
    for index in range(JOBS):
        engine.upsert(spec(body, f"job{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    assert collecting[:JOBS] == [False] * JOBS
    assert on_at_outcome[:JOBS] == [True] * JOBS, "on again for the recordings put off"
    await engine.shutdown()


async def test_a_run_due_alone_leaves_the_garbage_collector_on() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)
    collecting: list[bool] = []

    async def body(ctx: JobContext) -> None:
        collecting.append(gc.isenabled())

    for index in range(DISPATCH_BATCH):  # one batch: no burst
        engine.upsert(spec(body, f"job{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= DISPATCH_BATCH)
    assert collecting[:DISPATCH_BATCH] == [True] * DISPATCH_BATCH
    await engine.shutdown()


async def test_a_waiting_run_gives_its_slot_back_as_its_body_returns() -> None:
    # Ten slots for a burst of 128 runs: were the slots held until the outcomes, ten
    # runs would start, then wait for the burst to end before the others could.
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0, max_concurrent_runs=10)
    recorder = Recorder(engine)
    for index in range(JOBS):
        engine.upsert(spec(_noop, f"job{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    assert _started_before_first_outcome(recorder.events) == JOBS
    await engine.shutdown()


async def test_a_waiting_run_is_recorded_and_its_span_ended_as_of_when_its_body_returned() -> None:
    clock = LoopClock()
    exported, pipeline = spans_in_memory()
    engine = engine_on_loop_clock(
        clock, shutdown_timeout_seconds=1.0, telemetry=RunTelemetry(spans=pipeline)
    )
    last = f"job{JOBS - 1}"
    last_started_ns: list[int] = []

    def on_event(event: JobEvent) -> None:
        # The burst's last run starts: the wall clock jumps 5 s, real time moves on a little.
        # The runs waiting to be recorded have returned before; their outcome must say so.
        if isinstance(event, RunStarted) and event.name == last and not last_started_ns:
            last_started_ns.append(time.time_ns())
            clock.step(5.0)

    engine.add_listener(on_event)
    recorder = Recorder(engine)
    for index in range(JOBS):
        engine.upsert(spec(_noop, f"job{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    outcomes = [
        e
        for e in _first_instant(recorder.events)
        if isinstance(e, RunFinished) and e.name != last  # the last one's body saw the jump
    ]
    assert len(outcomes) == JOBS - 1
    assert max(e.duration_seconds for e in outcomes) < 1.0
    spans = exported.get_finished_spans()
    assert len(spans) >= JOBS - 1
    ended_early = [s for s in spans if s.end_time is not None and s.end_time < last_started_ns[0]]
    assert len(ended_early) >= JOBS - DISPATCH_BATCH, "the spans end when their bodies returned"
    await engine.shutdown()
    pipeline.provider.shutdown()


async def test_a_shutdown_during_a_burst_records_the_runs_put_off_as_they_ended() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    stopping: list[asyncio.Task[None]] = []
    told_before: list[int] = []
    halfway = f"job{2 * DISPATCH_BATCH - 1}"

    async def body(ctx: JobContext) -> None:
        # Half-way through the burst: the starts and outcomes of the first batches are put
        # off (their listeners hear of neither yet).
        if ctx.name == halfway:
            told_before.append(len(recorder.events))
            stopping.append(asyncio.ensure_future(engine.shutdown()))

    recorder = Recorder(engine)
    for index in range(JOBS):
        engine.upsert(spec(body, f"job{index}"))
    await recorder.until(lambda: bool(stopping))
    await stopping[0]
    assert told_before == [0], "starts and outcomes are told once the burst is over"
    assert gc.isenabled()
    started = {e.name for e in recorder.started()}
    assert len(started) == 2 * DISPATCH_BATCH, "the runs dispatched after it never start"
    ran = {e.name: e.status for e in recorder.finished() if e.name in started}
    assert ran == dict.fromkeys(started, RunStatus.SUCCESS), "they ran: not Interrupted"


async def test_runs_started_in_a_burst_are_cut_at_their_deadlines_armed_after_it() -> None:
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)

    async def stuck(ctx: JobContext) -> None:
        await asyncio.sleep(60.0)

    for index in range(JOBS):
        engine.upsert(spec(stuck, f"job{index}", timeout_seconds=0.5))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    outcomes = recorder.finished()[:JOBS]
    assert {e.error for e in outcomes} == {"TimeoutError: run exceeded 0.5s"}
    assert [e.duration_seconds for e in outcomes] == pytest.approx([0.5] * JOBS)
    await engine.shutdown()


def _jobs_with_spans_made(
    every: str = "1s",
) -> tuple[SpansMade, InMemorySpanExporter, Engine, Recorder]:
    """JOBS no-op jobs due together, on an engine whose telemetry notes the spans it makes."""
    clock = LoopClock()
    exported, pipeline = spans_in_memory()
    made = SpansMade(clock, pipeline)
    engine = engine_on_loop_clock(clock, shutdown_timeout_seconds=1.0, telemetry=made)
    recorder = Recorder(engine)
    for index in range(JOBS):
        engine.upsert(spec(_noop, f"job{index}", every=every))
    return made, exported, engine, recorder


async def test_the_next_ticks_of_a_burst_get_their_spans_made_once_it_is_over() -> None:
    made, exported, engine, recorder = _jobs_with_spans_made()
    await recorder.until(lambda: len(recorder.finished()) >= 2 * JOBS)
    await engine.shutdown()
    first, second = sorted({e.scheduled_time for e in recorder.finished()})[:2]
    assert made.ahead(first) == {}, "registered jobs' first ticks: no burst before them"
    ahead = made.ahead(second)
    assert len(ahead) == JOBS, "the second ticks' spans were made after the first burst"
    begun = {
        s.context.span_id: s.start_time or 0
        for s in exported.get_finished_spans()
        if s.context.span_id in ahead
    }
    assert len(begun) == JOBS, "the runs of the second tick were in them"
    assert all(begun[span_id] > ahead[span_id] for span_id in ahead), "begun as the body started"
    made.shutdown()


async def test_a_manual_run_between_leaves_the_next_ticks_span_to_it() -> None:
    made, exported, engine, recorder = _jobs_with_spans_made()
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    await asyncio.sleep(0)  # the burst is over: the next ticks' spans are made
    engine.trigger("ns/job0")
    await recorder.until(lambda: len(recorder.finished()) >= 2 * JOBS + 1)
    await engine.shutdown()
    scheduled = [e for e in recorder.finished() if e.trigger is not Trigger.MANUAL]
    ticks = sorted({e.scheduled_time for e in scheduled})
    used = made.ahead(ticks[1]).keys() & {s.context.span_id for s in exported.get_finished_spans()}
    assert len(used) == JOBS, "job0's second tick ran in the span made for it too"
    made.shutdown()


async def test_a_tick_further_away_than_the_horizon_is_not_made_ahead() -> None:
    interval = PREPARE_AHEAD_SECONDS + 1
    made, _, engine, recorder = _jobs_with_spans_made(every=f"{interval:g}s")
    # Two ticks: the first up to one interval after the jobs are registered (loop clock).
    await recorder.until(lambda: len(recorder.finished()) >= 2 * JOBS, within=3 * interval)
    await engine.shutdown()
    second = sorted({e.scheduled_time for e in recorder.finished()})[1]
    assert made.ahead(second) == {}, "made as each run starts, not kept for seconds"
    made.shutdown()


async def test_a_tick_made_ahead_that_does_not_start_leaves_no_span() -> None:
    made, exported, engine, recorder = _jobs_with_spans_made()
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    # The next ticks' spans are made; then half the jobs change (their spans are not for
    # the new spec) and the other half are removed (their ticks never come).
    await asyncio.sleep(0)
    assert len(made.made) == 2 * JOBS, "the second ticks' spans are made"
    for index in range(JOBS):
        if index % 2:
            engine.remove(f"ns/job{index}")
        else:
            engine.upsert(spec(_noop, f"job{index}", args={"changed": True}))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS + JOBS // 2)
    await engine.shutdown()
    runs = recorder.finished()
    exported_ids = [s.context.span_id for s in exported.get_finished_spans()]
    assert len(exported_ids) == len(runs), "one span a run, none for a tick that did not start"
    assert len(set(exported_ids)) == len(exported_ids)
    second = sorted({e.scheduled_time for e in runs})[1]
    assert len(made.ahead(second)) == JOBS
    assert not set(made.ahead(second)) & set(exported_ids), "a changed job's runs make theirs anew"
    made.shutdown()


async def test_recordings_put_off_are_done_in_one_callback_once_the_burst_is_over() -> None:
    done: list[str] = []
    burst: Burst[str] = Burst()
    assert not burst.going, "no burst: runs are recorded at once"
    burst.goes_on(done.append)
    assert burst.going
    burst.put_off("first")
    burst.put_off("second")
    burst.over(done.append)
    assert done == [], "after the runs just started"
    await asyncio.sleep(0)
    assert done == ["first", "second"]
    assert not burst.going


async def test_the_garbage_collector_is_off_until_the_recordings_of_a_burst() -> None:
    collecting: list[bool] = []

    def record(entry: str) -> None:
        collecting.append(gc.isenabled())

    burst: Burst[str] = Burst()
    burst.goes_on(record)
    burst.put_off("outcome")
    assert not gc.isenabled()
    burst.over(record)
    assert not gc.isenabled(), "until the runs just started have"
    await asyncio.sleep(0)
    assert collecting == [True]
    assert gc.isenabled()


async def test_a_garbage_collector_turned_off_by_the_process_stays_off() -> None:
    burst: Burst[str] = Burst()
    gc.disable()
    try:
        burst.goes_on(lambda entry: None)
        burst.flush(lambda entry: None)
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_a_failed_recording_keeps_none_of_the_others_from_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[str] = []

    def record(entry: str) -> None:
        if entry == "bad":
            raise RuntimeError("a listener's bug")
        done.append(entry)

    burst: Burst[str] = Burst()
    burst.goes_on(record)
    burst.put_off("bad")
    burst.put_off("second")
    burst.flush(record)
    assert done == ["second"]
    assert "recording a run's start or outcome failed" in caplog.text


async def test_a_burst_that_does_not_end_has_its_recordings_done_every_so_often() -> None:
    done: list[int] = []
    burst: Burst[int] = Burst()
    for batch in range(HELD_BATCHES_AT_MOST):
        burst.goes_on(done.append)
        burst.put_off(batch)
    await asyncio.sleep(0)
    assert done == []
    collecting: list[bool] = []

    def record(batch: int) -> None:
        collecting.append(gc.isenabled())
        done.append(batch)

    burst.goes_on(record)  # one batch more than the bound
    await asyncio.sleep(0)
    assert done == list(range(HELD_BATCHES_AT_MOST))
    assert collecting == [True] * HELD_BATCHES_AT_MOST, "the collector runs there"
    assert burst.going, "and the burst goes on for the runs that end next"
    assert not gc.isenabled()
    burst.flush(record)
