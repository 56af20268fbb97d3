"""Run slots (:class:`podcron.engine.budgets.Slots`): taken at once when free, in turn when not."""

from __future__ import annotations

import asyncio

import pytest

from podcron.engine.budgets import Slots

pytestmark = [pytest.mark.looptime]


async def _waiting(slots: Slots, order: list[str], name: str) -> None:
    await slots.take()
    order.append(name)


async def _full_with_two_waiting(
    order: list[str],
) -> tuple[Slots, asyncio.Task[None], asyncio.Task[None]]:
    """One slot, taken; "first" then "second" waiting for it, each noting in ``order`` its turn."""
    slots = Slots(1)
    assert slots.try_take()
    first = asyncio.create_task(_waiting(slots, order, "first"))
    second = asyncio.create_task(_waiting(slots, order, "second"))
    await _settle()
    assert order == []
    return slots, first, second


async def _settle() -> None:
    """Let every ready task take its next step (a handed-over slot wakes its waiter)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_free_slot_is_taken_by_a_plain_call_until_none_is_left() -> None:
    slots = Slots(2)
    assert [slots.try_take() for _ in range(3)] == [True, True, False]
    slots.give()
    assert slots.try_take()


async def test_a_slot_given_back_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    order: list[str] = []
    slots, first, second = await _full_with_two_waiting(order)
    slots.give()
    assert not slots.try_take(), "the slot given back is the first waiter's already"
    await _settle()
    assert order == ["first"]
    slots.give()
    await _settle()
    assert order == ["first", "second"]
    await asyncio.gather(first, second)


async def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    order: list[str] = []
    slots, first, second = await _full_with_two_waiting(order)
    slots.give()  # to first, which is cancelled before it wakes
    first.cancel()
    await _settle()
    assert first.cancelled()
    assert order == ["second"], "the slot went on to the next waiter, not lost"
    await second
    slots.give()
    assert slots.try_take(), "no slot was lost nor made"
    assert not slots.try_take()


async def test_a_waiter_cancelled_while_it_waits_leaves_the_queue() -> None:
    slots = Slots(1)
    assert slots.try_take()
    waiter = asyncio.create_task(slots.take())
    await _settle()
    waiter.cancel()
    await _settle()
    assert waiter.cancelled()
    slots.give()
    assert slots.try_take(), "the slot is free, not kept for the cancelled waiter"
