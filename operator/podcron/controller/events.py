"""Kubernetes Events about ScheduledJobs: state changes and failed runs, never successes.

Events aggregate as client-go's event correlator makes them, so that a job failing
every few seconds is one Event that ``kubectl describe`` shows as
``3s (x42 over 7m)``, not hundreds of objects:

* An Event like an earlier one (same object, type, reason and message) is a repeat:
  the earlier Event's ``count`` goes up and its ``lastTimestamp`` moves (a PATCH),
  no new object is made.
* Similar Events (same object, type and reason) whose messages keep changing, such
  as errors with an id or an address in them, are combined: from the tenth distinct
  message within ten minutes on, they are repeats of one Event whose message is
  ``(combined from similar events): `` and the latest message, until ten minutes
  pass without one.
* Requests per series are rate-limited by a token bucket: a burst of 5 at once, then
  one per ``repeat_interval`` (10 s), each carrying the count so far. So an
  occasional repeat (a job suspended and resumed) shows at once, while a job failing
  every second costs one request per 10 s, as the one Event per 10 s it used to post.
* A repeat of an Event the API server has expired (its ``--event-ttl``, an hour by
  default) creates it again, with the count and first time it had.

The bookkeeping is bounded as client-go's is: the 4,096 most recently used series
and similarity records; an older one is forgotten (its repeats start a new Event),
and so is everything about a deleted job. An operator restart starts new Events.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from podcron.controller.kubeapi import MESSAGE_LIMIT, KubeApi
from podcron.errors import ObjectGone, TransientApiError

log = logging.getLogger("podcron.events")

REPEAT_INTERVAL_SECONDS = 10.0
REPEAT_BURST = 5
CACHE_SIZE = 4096
# client-go's EventAggregator defaults: 10 distinct messages within 10 minutes.
MAX_SIMILAR_MESSAGES = 10
SIMILAR_WINDOW_SECONDS = 600.0
COMBINED_PREFIX = "(combined from similar events): "


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """Which ScheduledJob an Event is about."""

    namespace: str
    name: str
    uid: str


# (object, type, reason, message key): the message key is "" for a similarity record.
_Key = tuple[ObjectRef, str, str, str]


@dataclass(slots=True, eq=False)
class _Series:
    """One Event object and its repeats."""

    ref: ObjectRef
    event_type: str
    reason: str
    message: str
    first_timestamp: datetime
    last_timestamp: datetime
    count: int = 1
    sent_count: int = 0  # the count the API server has
    name: str | None = None  # the Event object's, once created
    tokens: float = REPEAT_BURST  # requests it may send now
    refilled: float = 0.0  # when tokens were last topped up (the loop's clock)
    busy: bool = False  # a request in flight or a timer set: it will send the latest state
    timer: asyncio.TimerHandle | None = None
    dropped: bool = False  # its job was deleted: nothing more is sent
    evicted: bool = False  # forgotten to bound memory: what it counted goes at once


@dataclass(slots=True, eq=False)
class _Similar:
    """The distinct messages of one object, type and reason within the window."""

    last_seen: float
    messages: set[int] = field(default_factory=set)  # hashes: bounded memory per record
    combining: bool = False


V = TypeVar("V")


class _LruByObject(Generic[V]):
    """Least-recently-used entries, at most ``capacity``, that can be dropped per object."""

    def __init__(self, capacity: int, on_evict: Callable[[V], None]) -> None:
        self._entries: collections.OrderedDict[_Key, V] = collections.OrderedDict()
        self._keys_of: dict[ObjectRef, set[_Key]] = {}
        self._capacity = capacity
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _Key) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: _Key, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        self._keys_of.setdefault(key[0], set()).add(key)
        while len(self._entries) > self._capacity:
            oldest, evicted = self._entries.popitem(last=False)
            self._unindex(oldest)
            self._on_evict(evicted)

    def drop(self, ref: ObjectRef) -> list[V]:
        return [self._entries.pop(key) for key in self._keys_of.pop(ref, ())]

    def values(self) -> list[V]:
        return list(self._entries.values())

    def _unindex(self, key: _Key) -> None:
        keys = self._keys_of.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of[key[0]]


class EventRecorder:
    """Posts and aggregates Events from worker threads; a failed post is logged, never raised."""

    def __init__(
        self,
        api: KubeApi,
        *,
        repeat_interval: float = REPEAT_INTERVAL_SECONDS,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._api = api
        self._repeat_interval = repeat_interval
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="podcron-events")
        self._series: _LruByObject[_Series] = _LruByObject(cache_size, self._evicted)
        self._similar: _LruByObject[_Similar] = _LruByObject(cache_size, lambda _: None)
        self._in_flight: set[asyncio.Future[str | None]] = set()
        self._closing = False

    @property
    def series_count(self) -> int:
        """How many series are remembered (at most the cache size)."""
        return len(self._series)

    def post(self, ref: ObjectRef, *, warning: bool, reason: str, message: str) -> None:
        """Post an Event, or count it as a repeat of an earlier one."""
        if self._closing:
            return
        event_type = "Warning" if warning else "Normal"
        message = message[:MESSAGE_LIMIT]
        if self._combine(ref, event_type, reason, message):
            key: _Key = (ref, event_type, reason, COMBINED_PREFIX)
            message = (COMBINED_PREFIX + message)[:MESSAGE_LIMIT]
        else:
            key = (ref, event_type, reason, message)
        now = datetime.now(UTC)
        series = self._series.get(key)
        if series is None:
            refilled = asyncio.get_running_loop().time()
            series = _Series(ref, event_type, reason, message, now, now, refilled=refilled)
            self._series.put(key, series)
        else:
            series.count += 1
            series.message = message
            series.last_timestamp = now
        self._schedule(series)

    def run_failed(self, ref: ObjectRef, error: str | None) -> None:
        """Report a failed run: a Warning ``RunFailed`` with the error."""
        self.post(ref, warning=True, reason="RunFailed", message=error or "the run failed")

    def forget(self, ref: ObjectRef) -> None:
        """Drop everything about a deleted job: its Events will not be updated any more."""
        for series in self._series.drop(ref):
            series.dropped = True
            if series.timer is not None:
                series.timer.cancel()
                series.timer = None
                series.busy = False
        self._similar.drop(ref)

    def _combine(self, ref: ObjectRef, event_type: str, reason: str, message: str) -> bool:
        """Whether this Event joins the combined Event of its object, type and reason."""
        now = asyncio.get_running_loop().time()
        key: _Key = (ref, event_type, reason, "")
        record = self._similar.get(key)
        if record is None or now - record.last_seen > SIMILAR_WINDOW_SECONDS:
            record = _Similar(last_seen=now)
        record.last_seen = now
        self._similar.put(key, record)
        if not record.combining:
            record.messages.add(hash(message))
            if len(record.messages) >= MAX_SIMILAR_MESSAGES:
                record.combining = True
                record.messages.clear()
        return record.combining

    # -- sending ----------------------------------------------------------

    def _schedule(self, series: _Series) -> None:
        if series.busy or series.dropped or series.count <= series.sent_count:
            return
        now = asyncio.get_running_loop().time()
        series.tokens = min(
            REPEAT_BURST, series.tokens + (now - series.refilled) / self._repeat_interval
        )
        series.refilled = now
        if series.tokens >= 1 - 1e-9 or self._closing or series.evicted:
            series.tokens = max(0.0, series.tokens - 1)
            self._send(series)
        else:
            series.busy = True
            series.timer = asyncio.get_running_loop().call_later(
                (1 - series.tokens) * self._repeat_interval, self._refilled, series
            )

    def _refilled(self, series: _Series) -> None:
        series.busy = False
        series.timer = None
        self._schedule(series)

    def _evicted(self, series: _Series) -> None:
        # Repeats not yet sent go now, past the rate: the series is gone after that.
        series.evicted = True
        if series.timer is not None:
            series.timer.cancel()
            self._refilled(series)
        else:
            self._schedule(series)

    def _send(self, series: _Series) -> None:
        series.busy = True
        series.timer = None
        count = series.count
        future = asyncio.get_running_loop().run_in_executor(
            self._pool,
            self._request,
            series.ref,
            series.name,
            series.event_type,
            series.reason,
            series.message,
            count,
            series.first_timestamp,
            series.last_timestamp,
        )
        self._in_flight.add(future)
        future.add_done_callback(lambda done: self._sent(series, count, done))

    def _sent(self, series: _Series, count: int, done: asyncio.Future[str | None]) -> None:
        self._in_flight.discard(done)
        series.busy = False
        if done.cancelled() or done.exception() is not None:
            pass  # transient (logged): sent again, within the rate, with what came since
        else:
            # A name: the API server has the count. None: refused for good (logged), and
            # the repeats it counted are not tried again.
            series.name = done.result() or series.name
            series.sent_count = count
        if not self._closing:
            self._schedule(series)

    def _request(
        self,
        ref: ObjectRef,
        name: str | None,
        event_type: str,
        reason: str,
        message: str,
        count: int,
        first_timestamp: datetime,
        last_timestamp: datetime,
    ) -> str | None:
        """Create or update the Event (in a worker thread); its name, or None if refused.

        A transient failure raises nothing and returns the old name: the counts are
        sent again with the next repeat or retry.
        """
        try:
            if name is not None:
                try:
                    self._api.patch_event(
                        namespace=ref.namespace,
                        name=name,
                        count=count,
                        message=message,
                        last_timestamp=last_timestamp,
                    )
                    return name
                except ObjectGone:
                    pass  # expired: created again below, as it stood
            return self._api.create_event(
                namespace=ref.namespace,
                name=ref.name,
                uid=ref.uid,
                event_type=event_type,
                reason=reason,
                message=message,
                count=count,
                first_timestamp=first_timestamp,
                last_timestamp=last_timestamp,
            )
        except ObjectGone:
            return None  # the namespace is gone
        except TransientApiError as error:
            log.warning(
                "could not post Event %s for %s/%s (%s); retrying",
                reason,
                ref.namespace,
                ref.name,
                error,
            )
            raise
        except Exception:
            log.warning(
                "could not post Event %s for %s/%s", reason, ref.namespace, ref.name, exc_info=True
            )
            return None

    async def close(self) -> None:
        """Send the repeats still waiting, wait briefly for them, then release the threads."""
        self._closing = True
        for series in self._series.values():
            if series.timer is not None:
                series.timer.cancel()
                self._send(series)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=2.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
