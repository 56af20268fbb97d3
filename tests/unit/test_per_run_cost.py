"""The per-run cost tricks of the engine (docs/performance.md): each one undone fails here.

A run's path is counted in instructions (benchmarks/bench_run_cost.py); these
tests keep the shapes that made it cheaper from being undone as tidying.
"""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from podcron.context import JobContext, Trigger
from podcron.engine import (
    SYSTEM_CLOCK,
    PastRun,
    RunFinished,
    RunStarted,
    RunStatus,
    ThreadAbandoned,
    ThreadReturned,
)
from podcron.engine import jobs as engine_jobs
from podcron.engine.changes import JobChanges
from podcron.engine.events import Listeners
from podcron.engine.recording import Recorder as OutcomeRecorder
from podcron.schedules import Every

from .engine_support import Recorder, engine_on_loop_clock, spec


def test_the_system_clock_is_time_time_itself() -> None:
    # Not a method that calls it: the engine reads the clock three times a run.
    assert SYSTEM_CLOCK.wall is time.time


@pytest.mark.parametrize(
    "kind", [JobContext, RunStarted, RunFinished, ThreadAbandoned, ThreadReturned, PastRun]
)
def test_what_every_run_makes_is_a_tuple_not_a_frozen_dataclass(kind: type) -> None:
    # A frozen dataclass sets each field through object.__setattr__.
    assert issubclass(kind, tuple)


@pytest.mark.looptime
async def test_a_run_builds_no_history_until_a_snapshot_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Any] = []
    real = engine_jobs.History  # type: ignore[attr-defined]

    def counting(**fields: Any) -> Any:
        built.append(fields)
        return real(**fields)

    monkeypatch.setattr(engine_jobs, "History", counting)
    subject = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(subject)

    async def job(ctx: JobContext) -> None:
        pass

    subject.upsert(spec(job))
    built.clear()  # the snapshot upsert returns
    await recorder.until(lambda: len(recorder.finished()) == 5)
    assert built == [], "five runs, nobody asked: no History"
    first = subject.snapshot("ns/job").history
    assert subject.snapshot("ns/job").history is first, "built once, then handed out again"
    assert len(built) == 1
    assert first.counts.total == 5
    await subject.shutdown()


def test_a_jobs_past_runs_are_untracked_by_the_garbage_collector() -> None:
    # docs/performance.md: kept with their enum members, 20 past runs of 50,000 jobs were a
    # million tuples more for every full collection to scan.
    async def job(ctx: JobContext) -> None:
        pass

    state = engine_jobs.JobState.restored(spec(job), None, run_history_limit=20)
    recorder = OutcomeRecorder(
        clock=SYSTEM_CLOCK, metrics=None, listeners=Listeners(), config=None, changes=JobChanges()
    )
    due = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
    for status in (RunStatus.SUCCESS, RunStatus.FAILURE):
        recorder.record(state, Trigger.SCHEDULED, due, status, time.time(), None)
    recorder.record(state, Trigger.MANUAL, due, RunStatus.SKIPPED, None, "concurrencyPolicy Forbid")
    gc.collect()
    assert state.past_runs is not None
    assert [gc.is_tracked(kept) for kept in state.past_runs] == [False] * 3
    # What the engine hands out has its enum members again.
    shown = [engine_jobs.past_run(kept) for kept in state.past_runs]
    assert [(run.trigger, run.status) for run in shown] == [
        (Trigger.SCHEDULED, RunStatus.SUCCESS),
        (Trigger.SCHEDULED, RunStatus.FAILURE),
        (Trigger.MANUAL, RunStatus.SKIPPED),
    ]
    assert all(type(run.trigger) is Trigger and type(run.status) is RunStatus for run in shown)


@pytest.mark.looptime
async def test_an_every_job_is_armed_in_seconds_without_a_datetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # docs/performance.md: Every.next_timestamp_after, not next_after and its datetimes.
    def refused(self: Every, now: datetime) -> datetime | None:
        raise AssertionError("the engine armed a tick through next_after")

    monkeypatch.setattr(Every, "next_after", refused)
    subject = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    recorder = Recorder(subject)

    async def job(ctx: JobContext) -> None:
        pass

    subject.upsert(spec(job))
    await recorder.until(lambda: len(recorder.finished()) == 3)
    assert [event.status for event in recorder.finished()] == [RunStatus.SUCCESS] * 3
    await subject.shutdown()


@pytest.mark.looptime
async def test_runs_due_at_the_same_instant_share_one_scheduled_time() -> None:
    # docs/performance.md: one datetime per instant of a burst, not one per run.
    subject = engine_on_loop_clock(shutdown_timeout_seconds=1.0)
    seen: list[datetime] = []

    async def job(ctx: JobContext) -> None:
        seen.append(ctx.scheduled_time)

    recorder = Recorder(subject)
    for name in ("a", "b", "c"):
        subject.upsert(spec(job, name))
    await recorder.until(lambda: len(recorder.finished()) == 3)
    await subject.shutdown()
    assert seen[0] == seen[1] == seen[2]
    assert seen[0] is seen[1] is seen[2]
