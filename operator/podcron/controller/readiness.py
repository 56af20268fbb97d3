"""Readiness: the operator is ready once it holds every ScheduledJob that existed at its start.

kopf says nothing about when its first listing has been handled, so the
operator lists the ScheduledJobs itself when it starts, and is ready once
each of them has been reconciled (registered, or found invalid) or has gone.
Until then a job the engine does not hold yet may well exist: the control
socket answers "not ready" for it instead of "not found". A listing that
fails is retried, and so is one whose objects have not all been seen while
none came for a while: an object deleted between the listing and kopf's own
no longer counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger("podcron.readiness")

Key = tuple[str, str]  # (namespace, name)
#: How long to wait for the listed objects before listing again, if none came meanwhile.
RELIST_SECONDS = 5.0
#: After this long, become ready anyway and name what was never reconciled:
#: one object kopf cannot handle must not keep the whole operator unready.
GIVE_UP_SECONDS = 120.0


class StartupGate:
    """Tracks the objects listed at start-up until each was reconciled or has gone."""

    def __init__(self) -> None:
        self._reconciled: set[Key] = set()
        self._waiting: set[Key] | None = None  # None until the first listing
        self._complete = asyncio.Event()

    @property
    def complete(self) -> bool:
        """Whether every object listed at start-up has been reconciled or has gone."""
        return self._complete.is_set()

    @property
    def left(self) -> int | None:
        """How many listed objects were not reconciled yet; None before the first listing."""
        return None if self._waiting is None else len(self._waiting)

    @property
    def waiting(self) -> frozenset[Key]:
        """The listed objects not reconciled yet (empty before the first listing)."""
        return frozenset(self._waiting or ())

    def reconciled(self, namespace: str, name: str) -> None:
        """An object was registered, found invalid, or removed."""
        if self.complete:
            return
        key = (namespace, name)
        if self._waiting is None:
            self._reconciled.add(key)
            return
        self._waiting.discard(key)
        self._check()

    def listed(self, keys: Iterable[Key]) -> None:
        """The objects that exist now; the first call sets what start-up waits for.

        Later calls only drop objects that no longer exist.
        """
        current = set(keys)
        if self._waiting is None:
            self._waiting = current - self._reconciled
            self._reconciled.clear()
        else:
            self._waiting &= current
        self._check()

    def open(self) -> None:
        """Count as complete, whatever is still waiting."""
        self._complete.set()

    def _check(self) -> None:
        if self._waiting is not None and not self._waiting:
            self._complete.set()

    async def wait(self) -> None:
        """Return once complete."""
        await self._complete.wait()


async def watch_startup(
    gate: StartupGate,
    list_jobs: Callable[[], set[Key]],
    *,
    relist_seconds: float = RELIST_SECONDS,
    give_up_seconds: float = GIVE_UP_SECONDS,
) -> None:
    """List the ScheduledJobs (``list_jobs`` runs in a thread) until ``gate`` completes.

    Lists again after ``relist_seconds`` in which no listed object was reconciled, to
    drop those deleted since (while they keep coming, a listing only costs: 20,000
    objects are 40 pages and about a second of this process's CPU, and four replicas
    starting beside them listed every 5 s). Gives up after ``give_up_seconds`` with a
    warning naming what never came, and opens the gate.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_seconds
    listed: int | None = None
    relist = True
    while not gate.complete:
        if relist:
            try:
                keys = await asyncio.to_thread(list_jobs)
            except Exception as error:  # the API server may not answer yet: list again
                log.warning("listing the ScheduledJobs failed (%s); retrying", error)
            else:
                listed = len(keys) if listed is None else listed
                gate.listed(keys)
        before = gate.left
        remaining = deadline - loop.time()
        if remaining <= 0:
            left = sorted(gate.waiting)
            log.warning(
                "ready after %ss without having reconciled %d ScheduledJobs that existed at "
                "start-up (or without listing them): %s",
                give_up_seconds,
                len(left),
                ", ".join(f"{namespace}/{name}" for namespace, name in left[:5]) or "-",
            )
            gate.open()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(relist_seconds, remaining)):
                await gate.wait()
        relist = before is None or gate.left == before
    log.info("ready: the %d ScheduledJobs that existed at start-up are reconciled", listed or 0)
