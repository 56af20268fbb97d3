"""Process-wide settings that due runs' start times depend on: the GIL and the garbage collector.

Two things outside the event loop make a due run start late.

* Another thread holding the GIL (the OTLP exporter encoding a batch of
  spans, a plain-``def`` job, ``/metrics`` being rendered) keeps the loop
  waiting up to the interpreter's switch interval each time it wakes: 5 ms
  by default. :func:`tune_process` sets 1 ms.
* A full garbage collection scans every object the collector tracks while
  the loop stands still: about 30 ms for what kopf, the Kubernetes client,
  gRPC and OpenTelemetry load, and another 45 ms for 10,000 registered
  jobs. Objects that survive long enough (spans waiting in the export
  queue) bring one on every few seconds. ``gc.freeze()`` moves everything
  alive into a generation the collector no longer scans, so a full pass
  then costs only what was created since: :func:`tune_process` freezes at
  start-up, :func:`freeze_after_registrations` again after each wave of
  newly registered jobs.

What was created since still brings on full passes: 50-80 ms each at 10,000 jobs
taking 50 spec updates a second (kopf keeps each object's new body), every ten
seconds or so, wherever they fall, an instant of a thousand runs included.
:func:`collect_when_quiet` runs the full pass itself when the collector is about
to, at a moment the engine has no run to start or make ready for a while.

Frozen objects are never collected as cycles, so each freeze may pin
whatever cyclic garbage-to-be exists at that moment. Modules live as long as
the process; a removed job's objects hold no cycles and are freed by
reference counting (a unit test checks it). Freezes are rare (start-up,
large registration waves), which bounds the rest.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable

#: How long the event loop may wait for another thread to give up the GIL.
SWITCH_INTERVAL_SECONDS = 0.001
#: Registrations since the last freeze that make the next check freeze again.
FREEZE_AFTER_NEW_JOBS = 500
#: How often :func:`freeze_after_registrations` looks at the job count.
FREEZE_CHECK_SECONDS = 1.0
#: How often :func:`collect_when_quiet` looks whether a full pass is near.
COLLECT_CHECK_SECONDS = 0.1
#: How long the engine must have nothing to start for a full pass to be run early: a pass
#: at 10,000 jobs takes up to about 80 ms.
QUIET_SECONDS = 0.3

log = logging.getLogger("podcron.latency")


def tune_process() -> None:
    """Shorten the GIL switch interval and freeze what start-up created.

    Call once, after imports and configuration and before jobs register.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.freeze()


async def freeze_after_registrations(job_count: Callable[[], int]) -> None:
    """Freeze the heap again once ``job_count()`` grew by :data:`FREEZE_AFTER_NEW_JOBS`.

    Counts from zero: start it with :func:`tune_process`, before jobs
    register. Runs until cancelled. The count is looked at every
    :data:`FREEZE_CHECK_SECONDS`; a wave of registrations (the operator's
    start-up listing, a large apply) is frozen within that time of reaching
    the threshold, while a trickle of new jobs is not worth a freeze.
    """
    frozen_at = 0
    while True:
        await asyncio.sleep(FREEZE_CHECK_SECONDS)
        count = job_count()
        # Removed jobs lower the mark, so that their replacements count as new.
        frozen_at = min(frozen_at, count)
        if count - frozen_at >= FREEZE_AFTER_NEW_JOBS:
            gc.freeze()
            log.debug("froze the heap at %d jobs (%d objects frozen)", count, gc.get_freeze_count())
            frozen_at = count


def full_pass_now(quiet_for: float | None) -> bool:
    """Whether to run the collector's full pass now, the engine quiet for ``quiet_for`` s.

    Only when the collector would run one at its next middle-generation pass (its count
    of those reached the threshold), is on (off: a burst is being started), and the
    engine has nothing to start or make ready for :data:`QUIET_SECONDS` (None: nothing).
    """
    return (
        gc.isenabled()
        and gc.get_count()[2] >= gc.get_threshold()[2]
        and (quiet_for is None or quiet_for >= QUIET_SECONDS)
    )


async def collect_when_quiet(quiet_for: Callable[[], float | None]) -> None:
    """Run the collector's full pass early, at a quiet moment (:func:`full_pass_now`).

    ``quiet_for``: seconds until the engine next starts or makes ready runs.
    Runs until cancelled. A process never quiet is left to the collector's own timing.
    """
    while True:
        await asyncio.sleep(COLLECT_CHECK_SECONDS)
        if full_pass_now(quiet_for()):
            gc.collect()
