"""The jobs ``bench_operator.py`` schedules: each notes how late it started, as the ground truth.

They run inside the operator (``bench_operator_job:noop`` and
``bench_operator_job:sleep50``, with this directory on ``PYTHONPATH``). Each
scheduled run appends ``<name> <due> <lateness>`` (lateness: the run's own
``time.time()`` minus its tick's due time, in seconds) to the file named by
``PODCRON_BENCH_LATENESS_FILE``, in batches of about one second, so that a
thousand runs a second cost one write a second. The operator's own metrics
are not used: this is what the job itself saw.
"""

from __future__ import annotations

import asyncio
import os
import time

from podcron import JobContext

_OUT = os.environ.get("PODCRON_BENCH_LATENESS_FILE")
_FLUSH_SECONDS = 1.0
#: The busy half of the mix: a run that takes 50 ms, waiting as an I/O-bound job would.
_SLEEP_SECONDS = 0.05

_pending: list[str] = []
_last_flush = time.monotonic()


def _note(ctx: JobContext, started: float) -> None:
    global _last_flush
    if ctx.trigger != "scheduled" or _OUT is None:
        return
    due = ctx.scheduled_time.timestamp()
    _pending.append(f"{ctx.name} {due:.3f} {started - due:.6f}\n")
    if time.monotonic() - _last_flush >= _FLUSH_SECONDS:
        _last_flush = time.monotonic()
        # One small append a second: cheaper than a thread hop on every run.
        with open(_OUT, "a") as out:
            out.writelines(_pending)
        _pending.clear()


async def noop(ctx: JobContext) -> None:
    """Note the lateness and return."""
    _note(ctx, time.time())


async def sleep50(ctx: JobContext) -> None:
    """Note the lateness, then take 50 ms."""
    _note(ctx, time.time())
    await asyncio.sleep(_SLEEP_SECONDS)
