"""The jobs ``bench_operator.py`` schedules: each notes how late it started, as the ground truth.

They run inside the operator (``bench_operator_job:noop`` and
``bench_operator_job:sleep50``, with this directory on ``PYTHONPATH``). Each
scheduled run appends ``<name> <due> <lateness>`` (lateness: the run's own
``time.time()`` minus its tick's due time, in seconds) to the file named by
``PODCRON_BENCH_LATENESS_FILE``, in batches written a second after the
batch's first run, so that a thousand runs a second cost one write a second.
The operator's own metrics are not used: this is what the job itself saw.
"""

from __future__ import annotations

import asyncio
import os
import time

from podcron import JobContext

_OUT = os.environ.get("PODCRON_BENCH_LATENESS_FILE")
_FLUSH_SECONDS = 1.0
#: The busy half of the mix: a run that takes 50 ms, waiting as an I/O-bound job would.
SLEEP_SECONDS = 0.05

_pending: list[str] = []


def _flush(path: str) -> None:
    with open(path, "a") as out:
        out.writelines(_pending)
    _pending.clear()


def _note(ctx: JobContext, started: float) -> None:
    if ctx.trigger != "scheduled" or _OUT is None:
        return
    if not _pending:
        # One small append a second, a second after the first note waiting: cheaper than a
        # thread hop on every run, and no note waits for a later run (every-minute jobs).
        asyncio.get_running_loop().call_later(_FLUSH_SECONDS, _flush, _OUT)
    due = ctx.scheduled_time.timestamp()
    _pending.append(f"{ctx.name} {due:.3f} {started - due:.6f}\n")


async def noop(ctx: JobContext) -> None:
    """Note the lateness and return."""
    _note(ctx, time.time())


async def sleep50(ctx: JobContext) -> None:
    """Note the lateness, then take 50 ms."""
    _note(ctx, time.time())
    await asyncio.sleep(SLEEP_SECONDS)
