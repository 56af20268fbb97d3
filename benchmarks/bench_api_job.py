"""The job ``bench_api.py`` schedules: it does nothing but note how late it started.

It runs inside the operator (``bench_api_job:probe``, with this directory on
``PYTHONPATH`` and ``allowedModules: [bench_api_job]``). Each scheduled run
appends ``<due> <lateness>`` (Unix seconds, seconds) to the file named by
``PODCRON_BENCH_LATENESS_FILE``, in batches of about one second, so that a
thousand runs a second cost one write a second.
"""

from __future__ import annotations

import os
import time

from podcron import JobContext

_OUT = os.environ.get("PODCRON_BENCH_LATENESS_FILE")
_FLUSH_SECONDS = 1.0

_pending: list[str] = []
_last_flush = time.monotonic()


async def probe(ctx: JobContext) -> None:
    """Record the run's lateness: its start minus its tick's due time."""
    global _last_flush
    started = time.time()
    if ctx.trigger != "scheduled" or _OUT is None:
        return
    due = ctx.scheduled_time.timestamp()
    _pending.append(f"{due:.3f} {started - due:.6f}\n")
    if time.monotonic() - _last_flush >= _FLUSH_SECONDS:
        _last_flush = time.monotonic()
        # One small append a second: cheaper than a thread hop on every run.
        with open(_OUT, "a") as out:  # noqa: ASYNC230
            out.writelines(_pending)
        _pending.clear()
