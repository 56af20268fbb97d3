"""A run's timeout (:class:`podcron.engine.timeouts.RunTimeout`): asyncio.timeout's rules, cheaper.

The engine's run outcomes under a timeout are tested in test_run_outcomes.py; these
pin the rules it relies on, one by one, on a fake loop clock.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from podcron.engine.timeouts import RunTimeout

pytestmark = [pytest.mark.looptime]


async def _guarded(seconds: float, body: float) -> RunTimeout:
    """Sleep ``body`` seconds under a ``seconds`` timeout, as a run's body would; the guard."""
    guard = RunTimeout(seconds)
    try:
        await asyncio.sleep(body)
    except BaseException as error:
        guard.end(error)
        raise
    guard.end(None)
    return guard


async def test_the_deadline_cancels_the_body_and_is_told_as_a_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.create_task(_guarded(2.0, 10.0))
    assert loop.time() - began == pytest.approx(2.0)


async def test_a_body_that_returns_in_time_is_not_cancelled_and_leaves_no_timer() -> None:
    guard = await asyncio.create_task(_guarded(2.0, 1.0))
    assert not guard.expired
    await asyncio.sleep(5.0)  # past the deadline: had the timer stayed, it would cancel now
    assert not guard.expired


async def test_a_cancellation_by_someone_else_reaches_them_not_a_timeout_error() -> None:
    task = asyncio.create_task(_guarded(2.0, 10.0))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_someone_elses_cancellation_wins_even_when_the_deadline_came_too() -> None:
    async def body() -> None:
        guard = RunTimeout(1.0)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10.0)  # the deadline's cancellation, at 1 s
            await asyncio.sleep(10.0)  # someone else's, at 2 s
        except BaseException as error:
            guard.end(error)
            raise

    task = asyncio.create_task(body())
    await asyncio.sleep(2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_body_that_swallows_the_deadline_is_known_to_have_expired() -> None:
    async def stubborn() -> tuple[RunTimeout, int]:
        guard = RunTimeout(1.0)
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: it returns late
            await asyncio.sleep(10.0)
        guard.end(None)
        task = asyncio.current_task()
        assert task is not None
        return guard, task.cancelling()

    guard, cancelling = await asyncio.create_task(stubborn())
    assert guard.expired
    assert cancelling == 0, "the deadline's cancellation is taken back, as asyncio does"


async def test_a_timeout_is_armed_inside_a_task_only() -> None:
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[str] = loop.create_future()

    def from_a_callback() -> None:
        try:
            RunTimeout(1.0)
        except RuntimeError as error:
            refused.set_result(str(error))

    loop.call_soon(from_a_callback)
    assert "inside its task" in await refused


async def test_a_timeout_armed_later_keeps_the_deadline_it_was_made_with() -> None:
    # The engine arms the timeouts of runs started in a burst once the burst is over.
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def body() -> None:
        guard = RunTimeout(2.0, armed=False)
        await asyncio.sleep(1.5)
        guard.arm()
        try:
            await asyncio.sleep(10.0)
        except BaseException as error:
            guard.end(error)
            raise

    with pytest.raises(TimeoutError):
        await asyncio.create_task(body())
    assert loop.time() - began == pytest.approx(2.0)


async def test_a_timeout_whose_body_ended_before_it_was_armed_sets_no_timer() -> None:
    async def body() -> RunTimeout:
        guard = RunTimeout(1.0, armed=False)
        guard.end(None)
        guard.arm()  # the burst is over after the body returned
        await asyncio.sleep(5.0)  # past the deadline: a timer would cancel this task now
        return guard

    guard = await asyncio.create_task(body())
    assert not guard.expired
