"""The status writer: coalesced, rate-limited status patches.

A thousand one-second jobs would otherwise send a thousand patches a second.
Updates for one object are merged while they wait, each object is patched at
most once per ``per_object_interval``, and all objects together at most
``patches_per_second``. Merging keeps the newest value of every field, and the
operator always sends whole counters, so a run's outcome is never lost, only
folded into the next patch. Failed patches are merged back and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from podcron.controller.kubeapi import ObjectGone, TransientApiError

log = logging.getLogger("podcron.status")

Key = tuple[str, str]  # (namespace, name)
PatchFn = Callable[[str, str, Mapping[str, Any]], None]

RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


def merge(older: Mapping[str, Any], newer: Mapping[str, Any]) -> dict[str, Any]:
    """``newer`` over ``older``, objects merged key by key as a JSON merge patch would."""
    merged = dict(older)
    for key, value in newer.items():
        previous = merged.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            merged[key] = merge(previous, value)
        else:
            merged[key] = value
    return merged


class StatusWriter:
    """Queues status updates per object and sends them within the rate limits."""

    def __init__(
        self,
        patch: PatchFn,
        *,
        patches_per_second: float = 100.0,
        per_object_interval: float = 1.0,
        concurrency: int = 4,
    ) -> None:
        self._patch = patch
        self._spacing = 1.0 / patches_per_second
        self._per_object_interval = per_object_interval
        self._pending: dict[Key, dict[str, Any]] = {}
        self._queue: list[tuple[float, int, Key]] = []
        self._queued: set[Key] = set()
        self._last_sent: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._sequence = itertools.count()
        self._next_slot = 0.0
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="podcron-status")
        self.patches_sent = 0

    def update(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Queue ``status`` to be merged into the object's status."""
        key = (namespace, name)
        self._pending[key] = merge(self._pending.get(key, {}), status)
        if key not in self._queued:
            ready = self._last_sent.get(key, 0.0) + self._per_object_interval
            self._enqueue(key, max(ready, time.monotonic()))

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is queued for a deleted object."""
        key = (namespace, name)
        self._pending.pop(key, None)
        self._last_sent.pop(key, None)
        self._failures.pop(key, None)

    def _enqueue(self, key: Key, ready: float) -> None:
        heapq.heappush(self._queue, (ready, next(self._sequence), key))
        self._queued.add(key)
        self._wakeup.set()

    async def run(self) -> None:
        """Send queued patches until cancelled."""
        while True:
            await self._send_due(ignore_interval=False)
            timeout = None
            if self._queue:
                timeout = max(0.0, self._queue[0][0] - time.monotonic())
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def flush(self) -> None:
        """Send everything queued now, ignoring the per-object interval (used at shutdown)."""
        while self._queue or self._in_flight:
            await self._send_due(ignore_interval=True)
            if self._in_flight:
                await asyncio.wait(self._in_flight)

    async def _send_due(self, *, ignore_interval: bool) -> None:
        while self._queue and (ignore_interval or self._queue[0][0] <= time.monotonic()):
            _, _, key = heapq.heappop(self._queue)
            self._queued.discard(key)
            status = self._pending.pop(key, None)
            if status is None:
                continue  # forgotten meanwhile
            now = time.monotonic()
            self._next_slot = max(self._next_slot + self._spacing, now)
            if self._next_slot > now:
                await asyncio.sleep(self._next_slot - now)
            await self._slots.acquire()
            self._last_sent[key] = time.monotonic()
            task = asyncio.get_running_loop().create_task(self._send(key, status))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _send(self, key: Key, status: dict[str, Any]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, self._patch, key[0], key[1], status
            )
        except ObjectGone:
            self.forget(*key)
        except TransientApiError as error:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = min(RETRY_BASE_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
            log.warning("status patch of %s/%s failed (%s); retrying in %.1fs", *key, error, delay)
            self._pending[key] = merge(status, self._pending.get(key, {}))
            if key not in self._queued:
                self._enqueue(key, time.monotonic() + delay)
        except Exception:
            log.exception("status patch of %s/%s was refused; dropping it", *key)
        else:
            self.patches_sent += 1
            self._failures.pop(key, None)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Release the worker threads (after :meth:`flush`)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
