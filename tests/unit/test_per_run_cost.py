"""The per-run cost tricks of the engine (docs/performance.md): each one undone fails here.

A run's path is counted in instructions (benchmarks/bench_run_cost.py); these
tests keep the shapes that made it cheaper from being undone as tidying.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from podcron.context import JobContext
from podcron.engine import (
    SYSTEM_CLOCK,
    PastRun,
    RunFinished,
    RunStarted,
    ThreadAbandoned,
    ThreadReturned,
)
from podcron.engine import jobs as engine_jobs

from .engine_support import Recorder, engine_on_loop_clock, spec


def test_the_system_clock_is_time_time_itself() -> None:
    # Not a method that calls it: the engine reads the clock three times a run.
    assert SYSTEM_CLOCK.wall is time.time


@pytest.mark.parametrize(
    "kind", [RunStarted, RunFinished, ThreadAbandoned, ThreadReturned, PastRun]
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
