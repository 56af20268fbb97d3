"""Each job's run history: its last outcomes, newest first, bounded; and its recent failures.

On a fake loop clock (engine_support says how), so the times and durations are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from podcron.context import JobContext, Trigger
from podcron.engine import ConcurrencyPolicy, Engine, History, RunCounts, RunStatus
from podcron.errors import JobNotFound
from podcron.runrecord import ERROR_SUMMARY_LIMIT, RECENT_FAILURES

from .engine_support import LoopClock, Recorder, engine_on_loop_clock, spec

pytestmark = [pytest.mark.looptime, pytest.mark.asyncio_debug]


@pytest.fixture
async def clock() -> LoopClock:
    return LoopClock()


async def _engine(clock: LoopClock, **options: Any) -> Engine:
    return engine_on_loop_clock(clock, shutdown_timeout_seconds=1.0, **options)


async def test_the_last_runs_are_kept_newest_first_and_bounded(clock: LoopClock) -> None:
    engine = await _engine(clock, run_history_limit=4)
    recorder = Recorder(engine)
    # What each scheduled run does, in turn; a manual run returns at once.
    plan = ["ok", "fail", "slow", "ok", "ok"]

    async def job(ctx: JobContext) -> None:
        if ctx.trigger is Trigger.MANUAL:
            return
        step = plan.pop(0)
        if step == "fail":
            raise ValueError("boom")
        if step == "slow":
            await asyncio.sleep(10)  # cut short by the timeout

    engine.upsert(spec(job, timeout_seconds=0.5))  # every 1s
    await recorder.until(lambda: len(recorder.finished()) == 3)  # ok, boom, timed out
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 5)  # the manual run, then a tick
    await engine.shutdown()

    runs = engine.runs("ns/job")
    assert [(run.trigger, run.status) for run in runs] == [
        (Trigger.SCHEDULED, RunStatus.SUCCESS),
        (Trigger.MANUAL, RunStatus.SUCCESS),
        (Trigger.SCHEDULED, RunStatus.FAILURE),
        (Trigger.SCHEDULED, RunStatus.FAILURE),
    ], "the first run fell out of the four kept"
    assert [run.error for run in runs] == [
        None,
        None,
        "TimeoutError: run exceeded 0.5s",
        "ValueError: boom",
    ]
    ends = [run.ended for run in runs]
    assert ends == sorted(ends, reverse=True)
    for run, finished in zip(runs, reversed(recorder.finished()), strict=False):
        assert run.started is not None
        assert run.scheduled_time == finished.scheduled_time
        assert run.ended - run.started == pytest.approx(finished.duration_seconds)
    timed_out = runs[2]
    assert timed_out.ended - (timed_out.started or 0) == pytest.approx(0.5)
    assert all(run.trace_id == 0 for run in runs), "tracing is off: no trace to link"


async def test_a_skipped_tick_is_kept_with_the_reason(clock: LoopClock) -> None:
    engine = await _engine(clock)
    recorder = Recorder(engine)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(job, concurrency_policy=ConcurrencyPolicy.FORBID))
    await recorder.until(lambda: any(e.status is RunStatus.SKIPPED for e in recorder.finished()))
    release.set()
    await recorder.until(lambda: any(e.status is RunStatus.SUCCESS for e in recorder.finished()))
    await engine.shutdown()
    runs = engine.runs("ns/job")
    skipped = [run for run in runs if run.status is RunStatus.SKIPPED]
    assert skipped
    assert all(run.started is None for run in skipped)
    assert skipped[0].error == "concurrencyPolicy Forbid"
    # A skipped tick is no run: the last run's status and the counters say so.
    history = engine.snapshot("ns/job").history
    assert history.counts.skipped == len(skipped)
    assert history.last_status is RunStatus.SUCCESS


async def test_a_limit_of_zero_keeps_no_runs(clock: LoopClock) -> None:
    engine = await _engine(clock, run_history_limit=0)
    recorder = Recorder(engine)

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) == 2)
    await engine.shutdown()
    assert engine.runs("ns/job") == []
    assert engine.snapshot("ns/job").history.counts.total == 2


async def test_an_unknown_job_has_no_runs(clock: LoopClock) -> None:
    engine = await _engine(clock)
    with pytest.raises(JobNotFound, match="'ns/nothing'"):
        engine.runs("ns/nothing")
    with pytest.raises(ValueError, match="run_history_limit"):
        Engine(run_history_limit=-1)


async def test_recent_failures_keep_the_last_three_newest_first(clock: LoopClock) -> None:
    engine = await _engine(clock)
    recorder = Recorder(engine)
    calls = 0

    async def job(ctx: JobContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            return
        raise RuntimeError(f"failure {calls} " + "x" * 1000)

    engine.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) == 5)
    await engine.shutdown()
    history = engine.snapshot("ns/job").history
    failures = history.recent_failures
    assert len(failures) == RECENT_FAILURES
    assert [f.error[:19] for f in failures if f.error] == [
        "RuntimeError: failu",
    ] * 3
    assert [f.error.split()[2] for f in failures if f.error] == ["4", "3", "2"]
    assert all(f.error is not None and len(f.error) == ERROR_SUMMARY_LIMIT for f in failures)
    assert all(f.trigger == "scheduled" for f in failures)
    runs = {run.started: run for run in engine.runs("ns/job")}
    assert [f.time.timestamp() for f in failures] == pytest.approx(
        [run.started for run in runs.values() if run.status is RunStatus.FAILURE][:3]
    )
    # A success since does not clear them: they are what went wrong last.
    assert history.last_status is RunStatus.SUCCESS


async def test_recent_failures_continue_from_status_after_a_restart(clock: LoopClock) -> None:
    first = await _engine(clock)
    recorder = Recorder(first)

    async def job(ctx: JobContext) -> None:
        raise ValueError("boom")

    first.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) == 2)
    await first.shutdown()
    restored: History = first.snapshot("ns/job").history
    second = await _engine(clock)
    snapshot = second.upsert(spec(job), history=restored)
    assert snapshot.history is restored, "handed out as restored until a run changes it"
    assert second.runs("ns/job") == [], "the run history is not in status: it starts empty"
    recorder = Recorder(second)
    await recorder.until(lambda: len(recorder.finished()) == 1)
    await second.shutdown()
    failures = second.snapshot("ns/job").history.recent_failures
    assert len(failures) == 3
    assert failures[1:] == restored.recent_failures
    assert second.snapshot("ns/job").history.counts.failed == restored.counts.failed + 1


async def test_every_counter_continues_from_status_after_a_restart(clock: LoopClock) -> None:
    engine = await _engine(clock)
    restored = History(
        last_run_time=datetime(2026, 1, 1, tzinfo=UTC),
        last_status=RunStatus.FAILURE,
        last_duration_seconds=2.5,
        last_error="boom",
        counts=RunCounts(total=10, succeeded=6, failed=4, skipped=3),
    )

    async def job(ctx: JobContext) -> None:
        pass

    engine.upsert(spec(job), history=restored)
    recorder = Recorder(engine)
    await recorder.until(lambda: len(recorder.finished()) == 1)
    await engine.shutdown()
    history = engine.snapshot("ns/job").history
    assert history.counts == RunCounts(total=11, succeeded=7, failed=4, skipped=3)
    assert history.last_status is RunStatus.SUCCESS
    # A success leaves the last error as it was: it is what went wrong last.
    assert history.last_error == "boom"


RAN_BEFORE = History(
    last_run_time=datetime(2026, 1, 1, tzinfo=UTC),
    last_status=RunStatus.FAILURE,
    last_duration_seconds=2.5,
    last_error="boom",
    counts=RunCounts(total=10, succeeded=6, failed=4, skipped=3),
)
NEVER_RAN = History(counts=RunCounts(skipped=3))


@pytest.mark.parametrize("restored", [RAN_BEFORE, NEVER_RAN], ids=["ran-before", "never-ran"])
async def test_a_skipped_tick_after_a_restart_keeps_the_restored_last_run(
    clock: LoopClock, restored: History
) -> None:
    engine = await _engine(clock)
    release = asyncio.Event()

    async def job(ctx: JobContext) -> None:
        await release.wait()

    engine.upsert(spec(job, concurrency_policy=ConcurrencyPolicy.FORBID), history=restored)
    recorder = Recorder(engine)
    await recorder.until(lambda: len(recorder.finished()) == 1)  # the next tick is skipped
    history = engine.snapshot("ns/job").history
    counts = restored.counts
    assert history == dataclasses.replace(
        restored, counts=dataclasses.replace(counts, skipped=counts.skipped + 1)
    )
    release.set()
    await engine.shutdown()
