"""Jobs that misbehave on purpose, for the tests of the engine's limits end to end.

The operator imports this module as ``pressure_jobs:<function>``: the tests put
this directory on its ``PYTHONPATH`` and allow the module in ``allowedModules``.
"""

from __future__ import annotations

import asyncio
import time

from podcron import JobContext


def sleep_in_thread(ctx: JobContext) -> None:
    """A plain def job stuck in a call that ignores ``ctx.cancelled`` for ``seconds``."""
    time.sleep(float(ctx.args["seconds"]))


def quick_in_thread(ctx: JobContext) -> None:
    """A plain def job that returns at once."""


async def quick(ctx: JobContext) -> None:
    """An async job that returns at once."""


async def sleep(ctx: JobContext) -> None:
    """An async job that waits ``seconds`` without holding the event loop."""
    await asyncio.sleep(float(ctx.args["seconds"]))


async def block_the_loop(ctx: JobContext) -> None:
    """The mistake the watchdog names: blocking code in a coroutine."""
    time.sleep(float(ctx.args["seconds"]))  # noqa: ASYNC251


async def cancel_itself(ctx: JobContext) -> None:
    """An async job that gives up by raising CancelledError itself."""
    raise asyncio.CancelledError("gave up")
