"""Runs due at one instant all start before any of them is recorded (engine/burst.py).

More than ``DISPATCH_BATCH`` jobs due together start over several timer callbacks;
a run whose body returned in between waits to be recorded until they all have.
"""

from __future__ import annotations

import asyncio
import gc
import math
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
from podcron.engine.engine import READY_AHEAD_PER_RUN_SECONDS
from podcron.engine.gate import GateListener, Verdict
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
    assert len(started) == JOBS, "made ready ahead of their instant, they all start at it"
    ran = {e.name: e.status for e in recorder.finished() if e.name in started}
    assert ran == dict.fromkeys(started, RunStatus.SUCCESS), "they ran: not Interrupted"


async def test_runs_started_in_a_burst_are_cut_at_their_deadlines_armed_after_it() -> None:
    # A slot for each: a run that waited for one would still be active at the next tick.
    engine = engine_on_loop_clock(shutdown_timeout_seconds=1.0, max_concurrent_runs=JOBS)
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


#: How far ahead of their instant the runs of JOBS jobs due together are made ready.
MADE_READY_LEAD = JOBS * READY_AHEAD_PER_RUN_SECONDS


async def test_the_next_ticks_of_a_burst_get_their_spans_made_once_it_is_over() -> None:
    made, exported, engine, recorder = _jobs_with_spans_made()
    await recorder.until(lambda: len(recorder.finished()) >= 2 * JOBS)
    await engine.shutdown()
    first, second = sorted({e.scheduled_time for e in recorder.finished()})[:2]
    assert made.ahead(first, MADE_READY_LEAD) == {}, "first ticks: made only as made ready"
    ahead = made.ahead(second, MADE_READY_LEAD)
    assert len(ahead) == JOBS, "the second ticks' spans were made after the first burst"
    _assert_begun_as_the_bodies_started(ahead, exported)
    made.shutdown()


def _assert_begun_as_the_bodies_started(
    ahead: dict[int, int], exported: InMemorySpanExporter
) -> None:
    """Every span made ahead (span id: made at, ns) was a run's, begun after it was made."""
    assert len(ahead) == JOBS, "one a job"
    begun = {
        s.context.span_id: s.start_time or 0
        for s in exported.get_finished_spans()
        if s.context.span_id in ahead
    }
    assert len(begun) == JOBS, "each used by its run"
    assert all(begun[span_id] > ahead[span_id] for span_id in ahead), "begun as the body started"


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


async def test_a_tick_beyond_the_horizon_gets_its_span_made_as_its_run_is_made_ready() -> None:
    # No span was made after the last burst, the tick too far then: making the runs ready
    # ahead of their instant makes them, rather than each run once the instant has come.
    interval = PREPARE_AHEAD_SECONDS + 1
    made, exported, engine, recorder = _jobs_with_spans_made(every=f"{interval:g}s")
    # Two ticks: the first up to one interval after the jobs are registered (loop clock).
    await recorder.until(lambda: len(recorder.finished()) >= 2 * JOBS, within=3 * interval)
    await engine.shutdown()
    second = sorted({e.scheduled_time for e in recorder.finished()})[1]
    assert made.ahead(second, MADE_READY_LEAD) == {}, "made as made ready, not kept for seconds"
    _assert_begun_as_the_bodies_started(made.ahead(second), exported)
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
    # Those made once the first burst was over, before the jobs changed.
    after_burst = {
        span_id for *_, scheduled, span_id in made.made[: 2 * JOBS] if scheduled == second
    }
    assert len(after_burst) == JOBS
    assert not set(after_burst) & set(exported_ids), "a changed job's runs make theirs anew"
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


async def _until(clock: LoopClock, instant: float) -> None:
    """Sleep on the fake loop clock until the wall clock reads ``instant``."""
    await asyncio.sleep(instant - clock.wall())


def _noted_jobs(
    jobs: int, clock: LoopClock, **options: object
) -> tuple[Engine, Recorder, list[tuple[str, float]], float]:
    """``jobs`` jobs due together every second, whose bodies note when they began; and
    the first instant they are due at."""
    engine = engine_on_loop_clock(clock, shutdown_timeout_seconds=1.0, **options)
    recorder = Recorder(engine)
    began: list[tuple[str, float]] = []

    async def body(ctx: JobContext) -> None:
        began.append((ctx.name, clock.wall()))

    for index in range(jobs):
        engine.upsert(spec(body, f"job{index}"))
    return engine, recorder, began, float(math.floor(clock.wall()) + 1)


async def _all_begin_at_or_after(
    instant: float, engine: Engine, recorder: Recorder, began: list[tuple[str, float]]
) -> None:
    """Wait for the outcomes of the first instant's runs; none began before it."""
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    assert min(at for _, at in began) >= instant
    await engine.shutdown()


async def test_the_runs_of_an_instant_are_made_ready_ahead_of_it_and_start_at_it() -> None:
    clock = LoopClock()
    engine, recorder, began, instant = _noted_jobs(JOBS, clock)
    await _until(clock, instant - 0.001)
    assert engine.running_count == JOBS, "dispatched, waiting in their tasks"
    assert began == []
    assert recorder.events == []
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    assert len(began) == JOBS
    assert min(at for _, at in began) >= instant
    outcomes = recorder.finished()[:JOBS]
    assert {e.status for e in outcomes} == {RunStatus.SUCCESS}
    assert min(e.lateness_seconds for e in recorder.started()) >= 0.0
    await engine.shutdown()


async def test_an_instant_of_one_batch_is_not_made_ready_ahead() -> None:
    clock = LoopClock()
    engine, recorder, began, instant = _noted_jobs(DISPATCH_BATCH, clock)
    await _until(clock, instant - 0.0001)
    assert engine.running_count == 0
    await recorder.until(lambda: len(recorder.finished()) >= DISPATCH_BATCH)
    assert min(at for _, at in began) >= instant
    await engine.shutdown()


async def test_a_job_whose_run_ends_just_before_its_next_instant_is_judged_at_it() -> None:
    # Forbid: the next tick is skipped only if the run is still active at the instant,
    # not when it was while the instant's runs were being made ready.
    clock = LoopClock()
    engine = engine_on_loop_clock(clock, shutdown_timeout_seconds=1.0)
    recorder = Recorder(engine)

    async def late(ctx: JobContext) -> None:
        if ctx.scheduled_time.timestamp() == first:
            await _until(clock, first + 1.0 - 0.0005)

    first = float(math.floor(clock.wall()) + 1)
    engine.upsert(spec(late, "late"))
    for index in range(1, JOBS):
        engine.upsert(spec(_noop, f"job{index}"))
    await recorder.until(lambda: sum(e.name == "late" for e in recorder.finished()) >= 2)
    outcomes = [e for e in recorder.finished() if e.name == "late"]
    assert [e.status for e in outcomes[:2]] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    await engine.shutdown()


async def test_a_shutdown_before_the_instant_lets_the_runs_made_ready_start_at_it() -> None:
    # They are decided: with several replicas, the successors start after them.
    clock = LoopClock()
    engine, recorder, began, instant = _noted_jobs(JOBS, clock)
    await _until(clock, instant - 0.001)
    await engine.shutdown()
    assert len(began) == JOBS
    assert min(at for _, at in began) >= instant
    assert {e.status for e in recorder.finished()} == {RunStatus.SUCCESS}


async def test_a_job_removed_before_the_instant_does_not_start_its_run_made_ready() -> None:
    clock = LoopClock()
    engine, recorder, began, instant = _noted_jobs(JOBS, clock)
    await _until(clock, instant - 0.001)
    engine.remove("ns/job0")
    await recorder.until(lambda: len(began) >= JOBS - 1)
    assert "job0" not in {name for name, _ in began}
    assert engine.running_count == 0
    await engine.shutdown()


class _DecidesOnFirstAsk:
    """A gate that starts every tick, and once asked its first has the engine decide every
    tick due (a SIGTERM's release) right after that batch: part way through an instant."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.asked = 0
        # Runs made ready when the engine was told to decide, and once it had.
        self.made_ready: tuple[int, int] | None = None

    def verdict(self, key: str, tick: float) -> Verdict:
        if not self.asked:
            asyncio.get_running_loop().call_soon(self._decide)
        self.asked += 1
        return Verdict.START

    def _decide(self) -> None:
        assert self.engine is not None
        before = self.engine.running_count
        self.engine.decide_due()
        self.made_ready = (before, self.engine.running_count)

    def set_listener(self, listener: GateListener) -> None:
        pass

    def asked_before(self, instant: float) -> None:
        pass


async def test_deciding_the_due_ticks_decides_a_whole_instant_being_made_ready() -> None:
    # A SIGTERM part way through: handed over, the rest of the instant would be uncertain
    # to the successors and started by nobody (docs/ha.md, rule 8).
    clock = LoopClock()
    gate = _DecidesOnFirstAsk()
    engine, recorder, began, instant = _noted_jobs(JOBS, clock, gate=gate)
    gate.engine = engine
    await _until(clock, instant - 0.0001)
    assert gate.made_ready == (DISPATCH_BATCH, JOBS), "told after the first batch: all of it"
    assert gate.asked == JOBS
    await _all_begin_at_or_after(instant, engine, recorder, began)


async def test_a_clock_set_back_holds_the_runs_made_ready_until_it_reads_their_instant() -> None:
    clock = LoopClock()
    engine, recorder, began, instant = _noted_jobs(JOBS, clock)
    await _until(clock, instant - 0.001)
    clock.step(-5.0)
    engine.clock_moved()
    await asyncio.sleep(1.0)
    assert began == []
    await _all_begin_at_or_after(instant, engine, recorder, began)


async def test_a_job_updated_while_its_run_waits_for_its_instant_runs_that_tick_once() -> None:
    clock = LoopClock()
    engine, recorder, _, instant = _noted_jobs(JOBS, clock)
    await _until(clock, instant - 0.001)
    engine.upsert(spec(_noop, "job0", timeout_seconds=5.0))  # the same schedule
    await _until(clock, instant + 1.5)
    job0 = [
        (e.scheduled_time.timestamp(), e.status) for e in recorder.finished() if e.name == "job0"
    ]
    assert job0 == [(instant, RunStatus.SUCCESS), (instant + 1.0, RunStatus.SUCCESS)]
    await engine.shutdown()


async def test_the_engine_is_quiet_until_it_makes_its_next_instants_runs_ready() -> None:
    # What the collector's early full pass waits for (podcron.latency.collect_when_quiet).
    clock = LoopClock()
    engine, recorder, _, instant = _noted_jobs(JOBS, clock)
    close = 1e-6  # the loop clock's resolution
    assert engine.quiet_for == pytest.approx(instant - MADE_READY_LEAD - clock.wall(), abs=close)
    await _until(clock, instant - MADE_READY_LEAD / 2)
    made_ready = pytest.approx(MADE_READY_LEAD / 2, abs=close)
    assert engine.quiet_for == made_ready, "made ready: they start at it"
    await recorder.until(lambda: len(recorder.finished()) >= JOBS)
    next_one = instant + 1 - MADE_READY_LEAD - clock.wall()
    assert engine.quiet_for == pytest.approx(next_one, abs=close)
    await engine.shutdown()
    assert engine.quiet_for is None


class _SlowToDecide:
    """A gate that starts every tick, taking ``seconds`` of real time to say so."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def verdict(self, key: str, tick: float) -> Verdict:
        time.sleep(self.seconds)  # a loop too busy to make the instant ready in its lead
        return Verdict.START

    def set_listener(self, listener: GateListener) -> None:
        pass

    def asked_before(self, instant: float) -> None:
        pass


@pytest.mark.looptime(False)  # the gate takes real time: the loop's must be real too
async def test_runs_made_ready_too_slowly_for_their_instant_all_start_before_any_is_recorded() -> (
    None
):
    # Each run takes four times its lead to make ready: the instant comes after the first
    # batch, with the rest left to dispatch. The burst goes on until they have started.
    engine = Engine(
        shutdown_timeout_seconds=1.0, gate=_SlowToDecide(4 * READY_AHEAD_PER_RUN_SECONDS)
    )
    recorder = Recorder(engine)
    for index in range(JOBS):
        engine.upsert(spec(_noop, f"job{index}"))
    await recorder.until(lambda: len(recorder.finished()) >= JOBS, within=5.0)
    await engine.shutdown()
    assert _started_before_first_outcome(recorder.events) == JOBS
