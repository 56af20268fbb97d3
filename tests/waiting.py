"""Waiting for a condition with a deadline, for every test directory: never sleep and hope."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds.

    The deadline guards against a hang, not for speed: on a machine whose load
    exceeds its cores it is stretched by that ratio (at most fourfold), as the
    processes under test are slowed by it too.
    """
    timeout *= load_factor()
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


async def until(
    condition: Callable[[], Any], within: float = 5.0, *, interval: float = 0.01, what: str = ""
) -> Any:
    """:func:`wait_for` for a test on the event loop: polls between the loop's own steps.

    The deadline is on the monotonic clock, not the loop's: what is awaited
    often happens on another thread, which a fake loop clock would not wait for.
    """
    within *= load_factor()
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def load_factor() -> float:
    """How much slower than idle this machine runs now: 1 to 4."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not every platform reports a load
        return 1.0
    return min(4.0, max(1.0, load / (os.cpu_count() or 1)))
