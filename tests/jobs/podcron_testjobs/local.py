"""Jobs that ``podcron run`` runs in the tests: one that succeeds and says what it was given,
one that fails deep in its own code, and ones that wait to be cancelled."""

from __future__ import annotations

import json
import threading

from podcron import JobContext


def echo(ctx: JobContext) -> None:
    """Log the context as one JSON line, for the test to read back."""
    ctx.log.info(
        "context %s",
        json.dumps(
            {
                "job_id": ctx.job_id,
                "trigger": ctx.trigger.value,
                "scheduled_time": ctx.scheduled_time.isoformat(),
                "deadline": None if ctx.deadline is None else ctx.deadline.isoformat(),
                "args": dict(ctx.args),
            }
        ),
    )


def _parse_row(row: str) -> int:
    return int(row)


async def fails(ctx: JobContext) -> None:
    """Fail in a helper of its own, so the traceback has the job's frames to show."""
    _parse_row(str(ctx.args.get("row", "not a number")))


async def waits_for_cancel(ctx: JobContext) -> None:
    """Wait until cancelled (Ctrl-C or the timeout), saying so first."""
    ctx.log.info("waiting to be cancelled")
    await ctx.cancelled


def polls_for_cancel(ctx: JobContext) -> None:
    """A thread job that stops when it sees ``ctx.cancelled``."""
    ctx.log.info("waiting to be cancelled")
    stop = threading.Event()
    while not ctx.cancelled:
        stop.wait(0.01)
    ctx.log.info("saw the cancellation")
