"""The status writer: coalesced, rate-limited status patches.

A thousand one-second jobs would otherwise send a thousand patches a second.
Updates for one object are merged while they wait, each object is patched at
most once per ``per_object_interval``, and all objects together at most
``patches_per_second``. Merging keeps the newest value of every field, and the
operator always sends whole counters, so a run's outcome is never lost, only
folded into the next patch. Failed patches are merged back and retried.

When the writer cannot keep up (more objects changing than the rate allows),
the objects take turns, oldest wait first. Urgent updates (a new or changed
``Ready`` condition: what someone who just ran ``kubectl apply`` waits for)
go ahead of that queue and skip the per-object interval; they come from spec
changes, so they cannot flood the API server the way run outcomes could.

A run's fields are queued as a function that builds them (:meth:`StatusWriter.
update_when_sent`), called when the patch goes out: a job that ran ten times
since its last patch costs one build of its status, not ten. At 1,000 one-second
jobs the writer sends a tenth of the updates it receives, and building status
fields for every run event was a sixth of the operator's time.

Patches are sent from worker threads, several at once: under a loaded API
server each takes long enough that one at a time would fall far below the
rate limit.

:meth:`StatusWriter.flush` (at shutdown) sends every object's last state at
once, past both limits and with more patches in flight: it happens once per
process, and at the ceiling a thousand jobs would need ten seconds. It stops at
the deadline it is given (what is left of the shutdown budget) and says how
many objects it could not write. A key the writer took from its queue is put
back if the writer is cancelled while it waits for its turn, so stopping the
writer never loses an update.

Each patch is made on the resourceVersion the writer last saw of its object
(its own previous patch, or what :meth:`StatusWriter.note_version` was told), so
the API server refuses it (409) if anyone else wrote meanwhile. Then the writer
reads the object again and hands the refused patch and the status it found to
:attr:`StatusWriter.rebase`, which returns what to send instead, on the new
version. With several replicas, a job's previous owner may still be writing
(the last outcomes of its runs as it drains) when the new owner writes; both
send whole counters, and without this the later write would win, lower or not.
:attr:`StatusWriter.landed` hears of each patch the API server took, and of
each that failed in a way that may have been applied (its answer lost), so
that whoever rebases knows what status held before somebody else wrote.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from podcron.errors import ApiConflict, ObjectGone, TransientApiError

log = logging.getLogger("podcron.status")

Key = tuple[str, str]  # (namespace, name)
Build = Callable[[], Mapping[str, Any]]
#: Reads an object's status and resourceVersion (in a worker thread).
ReadFn = Callable[[str, str], tuple[Mapping[str, Any], str]]
#: (namespace, name, refused patch, status found): what to send instead, None for nothing.
Rebase = Callable[[str, str, Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any] | None]
#: (namespace, name, patch, sure): the API server took the patch; not sure: it may
#: have (the request failed on the way back, or timed out).
Landed = Callable[[str, str, Mapping[str, Any], bool], None]
#: (namespace, name, patch): whether to send it still (with several replicas, a job another
#: replica owns by now is that replica's to write).
Wanted = Callable[[str, str, Mapping[str, Any]], bool]


class PatchFn(Protocol):
    """Merge-patches an object's status, on ``resource_version`` when one is given.

    Returns the object's new resourceVersion (None: not known). Raises
    :class:`ApiConflict` when the object is no longer at ``resource_version``.
    """

    def __call__(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str | None: ...


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
        concurrency: int = 16,
        flush_concurrency: int = 64,
        read: ReadFn | None = None,
    ) -> None:
        self._patch = patch
        self._read = read
        #: Set by whoever builds the patches; without it (or ``read``), a refused patch
        #: is sent again on no version.
        self.rebase: Rebase | None = None
        self.landed: Landed | None = None
        #: Asked as a patch goes out (namespace, name, patch); False drops it unsent.
        self.wanted: Wanted | None = None
        self._versions: dict[Key, str] = {}
        self._spacing = 1.0 / patches_per_second
        self._per_object_interval = per_object_interval
        self._pending: dict[Key, dict[str, Any]] = {}
        # Parts built when the patch goes out; a key here always has a `_pending` entry.
        self._deferred: dict[Key, Build] = {}
        # Keys waiting for their turn, by when it comes; `_queued` says which
        # keys have an entry there, so each has at most one.
        self._queue: list[tuple[float, int, Key]] = []
        self._queued: set[Key] = set()
        # Keys with an urgent update, first come first served. Such a key may
        # also wait in `_queue`: that entry then finds nothing left to send,
        # or waits out the per-object interval.
        self._urgent: collections.deque[Key] = collections.deque()
        self._urgent_keys: set[Key] = set()
        # One patch per object at a time, so that patches cannot overtake each
        # other; what arrives meanwhile is queued when the patch returns.
        self._sending: set[Key] = set()
        self._urgent_after_send: set[Key] = set()
        self._last_sent: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._sequence = itertools.count()
        self._next_slot = 0.0
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        # Threads start on demand: the semaphore keeps normal operation to
        # `concurrency` of them; only the flush at shutdown uses them all.
        self._flush_concurrency = max(concurrency, flush_concurrency)
        self._pool = ThreadPoolExecutor(
            self._flush_concurrency, thread_name_prefix="podcron-status"
        )
        # While flushing: keys to send, by when they may go (now, or after a
        # failed patch's back-off), in place of the rate-limited queues.
        self._flush_queue: list[tuple[float, int, Key]] | None = None
        self.patches_sent = 0

    def update(
        self, namespace: str, name: str, status: Mapping[str, Any], *, urgent: bool = False
    ) -> None:
        """Queue ``status`` to be merged into the object's status; ``urgent`` goes first."""
        key = (namespace, name)
        self._pending[key] = merge(self._pending.get(key, {}), status)
        self._queue_for(key, urgent=urgent)

    def update_when_sent(self, namespace: str, name: str, build: Build) -> None:
        """Queue fields that ``build`` makes when the object's patch goes out.

        ``build`` must read the state then, not capture it now: only the last one
        queued before a patch is called, and its fields go over everything else
        that patch holds. An empty result sends nothing.
        """
        key = (namespace, name)
        if self._flush_queue is not None:  # shutdown: no time to save, build it now
            self.update(namespace, name, build())
            return
        self._pending.setdefault(key, {})
        self._deferred[key] = build
        self._queue_for(key, urgent=False)

    def note_version(self, namespace: str, name: str, resource_version: str) -> None:
        """The object's version the patches build on, until the first patch says the next one.

        Ignored once a version is known: the writer's own patches keep it current,
        and an older one would only cost a refused patch.
        """
        self._versions.setdefault((namespace, name), resource_version)

    def take_version(self, namespace: str, name: str, resource_version: str) -> None:
        """Build on ``resource_version`` from now on: another writer's, newer than the one kept.

        For an object whose writes were someone else's until now (a job gained from
        another replica): the version kept is this writer's last, older than theirs,
        and every first patch on it was refused. Left alone while a patch of the
        object is in flight: its answer brings the next version.
        """
        key = (namespace, name)
        if key not in self._sending:
            self._versions[key] = resource_version

    def _queue_for(self, key: Key, *, urgent: bool) -> None:
        if self._flush_queue is not None:
            if key not in self._sending:
                self._enqueue_flush(key, 0.0)
        elif urgent:
            self._make_urgent(key)
        elif key not in self._queued and key not in self._sending:
            self._enqueue(key, max(self._turn(key), time.monotonic()))

    @property
    def pending(self) -> int:
        """How many objects have an update not written yet."""
        return len(self._pending.keys() | self._sending)

    def idle(self, namespace: str, name: str) -> bool:
        """Whether nothing is queued or being sent for the object."""
        key = (namespace, name)
        return key not in self._pending and key not in self._sending

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is queued for a deleted object."""
        key = (namespace, name)
        self._pending.pop(key, None)
        self._deferred.pop(key, None)
        self._last_sent.pop(key, None)
        self._failures.pop(key, None)
        self._versions.pop(key, None)
        self._urgent_after_send.discard(key)

    def _turn(self, key: Key) -> float:
        """The earliest moment ``key`` may be patched again."""
        return self._last_sent.get(key, 0.0) + self._per_object_interval

    def _make_urgent(self, key: Key) -> None:
        if key not in self._urgent_keys:
            self._urgent_keys.add(key)
            self._urgent.append(key)
            self._wakeup.set()

    def _enqueue(self, key: Key, ready: float) -> None:
        heapq.heappush(self._queue, (ready, next(self._sequence), key))
        self._queued.add(key)
        self._wakeup.set()

    async def run(self) -> None:
        """Send queued patches until cancelled."""
        while True:
            await self._send_due(flushing=False)
            timeout = None
            if self._urgent:
                timeout = 0.0
            elif self._queue:
                timeout = max(0.0, self._queue[0][0] - time.monotonic())
            self._wakeup.clear()
            # Not asyncio.wait_for: in Python 3.11 it swallows a cancellation
            # that comes as the event is set, and the writer would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def flush(
        self, *, until: float, first: Callable[[Mapping[str, Any]], bool] | None = None
    ) -> int:
        """Send every object's pending update now, past both rate limits (used at shutdown).

        Up to ``flush_concurrency`` patches are in flight at once, one per
        object; a patch that fails transiently is retried after its back-off
        while time remains. Objects whose update ``first`` picks go first,
        then those whose update waited longest: when the API server cannot
        take them all in time, those matter most. Returns when everything is
        written, or at ``until`` (the event loop's time) with the number of
        objects whose last update was not written; patches still in flight
        then are abandoned to their threads, and count as not written.
        Stop :meth:`run` first; updates that arrive meanwhile are sent too.
        """
        loop = asyncio.get_running_loop()
        for key in list(self._deferred):
            self._pending[key] = self._built(key, self._pending[key])
        self._flush_queue = []
        self._urgent.clear()
        self._urgent_keys.clear()
        self._queue.clear()
        self._queued.clear()
        order = sorted(
            (key for key in self._pending if key not in self._sending),  # those come back
            key=lambda key: (
                not (first is not None and first(self._pending[key])),
                self._last_sent.get(key, 0.0),
            ),
        )
        for key in order:
            self._enqueue_flush(key, 0.0)
        try:
            while self._pending or self._in_flight:
                self._start_flush_patches()
                now = loop.time()
                if now >= until:
                    break
                wake = until - now
                if self._flush_queue and len(self._in_flight) < self._flush_concurrency:
                    # A failed patch's back-off, or an update that arrived meanwhile.
                    wake = min(wake, max(0.0, self._flush_queue[0][0] - time.monotonic()))
                if self._in_flight:
                    await asyncio.wait(
                        self._in_flight, timeout=wake, return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    await asyncio.sleep(wake)
            unsent = self.pending
            for task in self._in_flight:
                task.cancel()
            return unsent
        finally:
            self._flush_queue = None

    def _enqueue_flush(self, key: Key, ready: float) -> None:
        assert self._flush_queue is not None
        heapq.heappush(self._flush_queue, (ready, next(self._sequence), key))

    def _start_flush_patches(self) -> None:
        queue = self._flush_queue
        assert queue is not None
        now = time.monotonic()
        while queue and queue[0][0] <= now and len(self._in_flight) < self._flush_concurrency:
            _, _, key = heapq.heappop(queue)
            status = None if key in self._sending else self._take(key)
            if status:  # else sent meanwhile, forgotten, queued after its patch, or empty
                self._start(key, status)

    def _next_due(self, *, ignore_interval: bool) -> Key | None:
        """The next key to patch now, if any."""
        while self._urgent:
            key = self._urgent.popleft()
            self._urgent_keys.discard(key)
            if key in self._sending:
                self._urgent_after_send.add(key)
            elif key in self._pending and not self._unwanted(key):
                return key
        while self._queue and (ignore_interval or self._queue[0][0] <= time.monotonic()):
            _, _, key = heapq.heappop(self._queue)
            self._queued.discard(key)
            if key not in self._pending or key in self._sending:
                continue  # sent by an urgent turn, forgotten, or queued again after the send
            turn = self._turn(key)
            if not ignore_interval and turn > time.monotonic():
                self._enqueue(key, turn)  # an urgent patch went out after this was queued
                continue
            if self._unwanted(key):
                continue
            return key
        return None

    def _unwanted(self, key: Key) -> bool:
        """Drop ``key``'s update if :attr:`wanted` turns it down as it stands (nothing to build).

        Asked before the key waits for its turn under the rate limit: a patch turned down
        costs no slot. One with fields still to build is asked again once they are built.
        """
        if self.wanted is None or key in self._deferred:
            return False
        if self.wanted(key[0], key[1], self._pending[key]):
            return False
        del self._pending[key]
        return True

    async def _send_due(self, *, flushing: bool) -> None:
        while (key := self._next_due(ignore_interval=flushing)) is not None:
            # The key is out of every queue while its turn is awaited: if the
            # writer is stopped here, it goes back, or its update would never
            # be sent (not even by flush, which finds keys in the queues).
            try:
                if not flushing:
                    now = time.monotonic()
                    self._next_slot = max(self._next_slot + self._spacing, now)
                    if self._next_slot > now:
                        await asyncio.sleep(self._next_slot - now)
                await self._slots.acquire()
            except BaseException:
                if key in self._pending:
                    self._make_urgent(key)
                raise
            # Taken only now, so that what arrived during the wait goes out too.
            status = self._take(key)
            if not status:  # forgotten meanwhile, or nothing left to say
                self._slots.release()
                continue
            self._start(key, status, slot=True)

    def _take(self, key: Key) -> dict[str, Any] | None:
        """What to patch ``key`` with now, out of the queues; None if it was forgotten.

        Empty when :attr:`wanted` turns it down: nothing is sent, nothing is kept.
        """
        status = self._pending.pop(key, None)
        if status is None:
            return None
        built = self._built(key, status)
        if self.wanted is not None and not self.wanted(key[0], key[1], built):
            return {}
        return built

    def _built(self, key: Key, status: dict[str, Any]) -> dict[str, Any]:
        build = self._deferred.pop(key, None)
        return status if build is None else merge(status, build())

    def _start(self, key: Key, status: dict[str, Any], *, slot: bool = False) -> None:
        """Patch ``key`` with ``status`` in a worker thread; ``slot``: release one when done."""
        self._sending.add(key)
        self._last_sent[key] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._send(key, status, slot=slot))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, key: Key, status: dict[str, Any], *, slot: bool) -> None:
        retry_at = 0.0
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(
                self._pool, self._patch, key[0], key[1], status, self._versions.get(key)
            )
        except ObjectGone:
            self.forget(*key)
        except ApiConflict:
            retry_at = await self._after_conflict(key, status)
        except TransientApiError as error:
            if self.landed is not None:
                self.landed(key[0], key[1], status, False)
            retry_at = self._failed(key, status, error)
        except Exception:
            log.exception("status patch of %s/%s was refused; dropping it", *key)
        else:
            self.patches_sent += 1
            self._failures.pop(key, None)
            if version is not None:
                self._versions[key] = version
            if self.landed is not None:
                self.landed(key[0], key[1], status, True)
        finally:
            # The interval counts from the end of a patch too: a worker thread that
            # starts late must not land two patches closer together than promised.
            self._last_sent[key] = time.monotonic()
            self._sending.discard(key)
            if slot:
                self._slots.release()
            if key in self._pending:
                if self._flush_queue is not None:
                    self._urgent_after_send.discard(key)
                    self._enqueue_flush(key, retry_at)
                elif key in self._urgent_after_send:
                    self._urgent_after_send.discard(key)
                    self._make_urgent(key)
                elif key not in self._queued:
                    self._enqueue(key, max(self._turn(key), retry_at, time.monotonic()))

    def _failed(self, key: Key, status: dict[str, Any], error: Exception) -> float:
        """Keep a patch that failed for another try; returns when that may be."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay: float = min(RETRY_BASE_SECONDS * 2 ** (failures - 1), RETRY_MAX_SECONDS)
        log.warning("status patch of %s/%s failed (%s); retrying in %.1fs", *key, error, delay)
        self._pending[key] = merge(status, self._pending.get(key, {}))
        return time.monotonic() + delay

    async def _after_conflict(self, key: Key, status: dict[str, Any]) -> float:
        """Rebase a refused patch; returns when to retry (0: as usual)."""
        try:
            await self._rebase(key, status)
        except ObjectGone:
            self.forget(*key)
        except TransientApiError as error:
            return self._failed(key, status, error)
        except Exception:
            # Refused like a patch (say, RBAC without get on the status): the task
            # must not end in an exception nobody retrieves, and the writer goes on.
            log.exception("status of %s/%s could not be read again; dropping its patch", *key)
        return 0.0

    async def _rebase(self, key: Key, status: dict[str, Any]) -> None:
        """Someone wrote ``key`` since its version: send ``status`` again on what it holds now."""
        rebase, read = self.rebase, self._read
        if rebase is None or read is None:
            self._versions.pop(key, None)
            self._pending[key] = merge(status, self._pending.get(key, {}))
            return
        found, version = await asyncio.get_running_loop().run_in_executor(self._pool, read, *key)
        if key not in self._versions:
            return  # forgotten meanwhile: the object was deleted
        self._versions[key] = version
        again = rebase(key[0], key[1], status, found)
        if again:
            self._pending[key] = merge(again, self._pending.get(key, {}))
        if key in self._pending:
            # Not a new update but one that was due, often the urgent first one of a job
            # (kopf's own write to its annotations moves the version right after it).
            self._urgent_after_send.add(key)

    def close(self) -> None:
        """Release the worker threads (after :meth:`flush`)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
