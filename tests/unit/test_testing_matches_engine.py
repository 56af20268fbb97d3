"""``podcron.testing`` and ``podcron run`` record what the operator's engine records.

Each job below runs once in the real :class:`Engine` (a manual run) and once in a
harness, with the same timeout; the outcome and its error must be the same.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from podcron.context import JobContext
from podcron.engine import Engine
from podcron.testing import harness

from .engine_support import Recorder, spec

TIMEOUT = 0.1


async def succeeds(ctx: JobContext) -> None:
    ctx.log.info("done")


async def raises(ctx: JobContext) -> None:
    raise ValueError("bad row 7")


async def hangs(ctx: JobContext) -> None:
    await asyncio.Event().wait()


async def swallows_its_timeout(ctx: JobContext) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        return


async def times_out_on_its_own(ctx: JobContext) -> None:
    raise TimeoutError("the database did not answer")


async def raises_cancelled(ctx: JobContext) -> None:
    raise asyncio.CancelledError


def thread_succeeds(ctx: JobContext) -> None:
    ctx.log.info("done")


def thread_raises(ctx: JobContext) -> None:
    raise KeyError("rows")


def thread_polls_until_cancelled(ctx: JobContext) -> None:
    pause = threading.Event()
    while not ctx.cancelled:
        pause.wait(0.005)


JOBS: list[Callable[[JobContext], Any]] = [
    succeeds,
    raises,
    hangs,
    swallows_its_timeout,
    times_out_on_its_own,
    raises_cancelled,
    thread_succeeds,
    thread_raises,
    thread_polls_until_cancelled,
]


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(shutdown_timeout_seconds=1.0, worker_threads=2)
    yield engine
    await engine.shutdown()


@pytest.mark.parametrize("job", JOBS, ids=[job.__name__ for job in JOBS])
async def test_the_same_outcome_as_the_engine(
    engine: Engine, job: Callable[[JobContext], Any]
) -> None:
    recorder = Recorder(engine)
    engine.upsert(spec(job, every="1h", timeout_seconds=TIMEOUT))
    engine.trigger("ns/job")
    await recorder.until(lambda: len(recorder.finished()) == 1)
    (recorded,) = recorder.finished()
    outcome = await harness(timeout=TIMEOUT).run_async(job)
    assert (outcome.status, outcome.error) == (recorded.status, recorded.error)
