"""Which keys fall due when: a heap of due times, one bucket of keys each. Pure: no clock, no loop.

The engine keeps one timer for every job by asking this queue for its
earliest due time. Many keys share a due time: at 50,000 jobs with intervals
in whole milliseconds, some instants are due for hundreds of them. So the
heap holds each due time once, as a plain float (compared in C, with no
tuple around it), and a dict maps it to the keys due then, in the order they
were pushed: a key joining a time already queued costs a list append, and a
burst of keys costs one heap operation, not one each. Nothing here refers to
a job, so the garbage collector untracks what it holds.

Replacing or discarding a key leaves its old place in a bucket behind: the
key's live due time is in ``_armed``, and a place whose time is not it is
stale. Stale places are dropped as they surface, and every bucket is rebuilt
once they dominate, so a churn of updates cannot grow the queue without
bound.
"""

from __future__ import annotations

import heapq

# Rebuild the buckets once this many places are stale and they are most of them.
COMPACT_AFTER_STALE = 1024


class DueQueue:
    """Keys with one due time each (seconds, any monotone scale); the earliest first."""

    __slots__ = ("_armed", "_buckets", "_draining", "_draining_at", "_heap", "_places", "_stale")

    def __init__(self) -> None:
        # Each due time that has a bucket, once.
        self._heap: list[float] = []
        self._buckets: dict[float, list[str]] = {}
        # The live due time of each key; a key's place in any other bucket is stale.
        self._armed: dict[str, float] = {}
        # The bucket being popped (taken off the heap when its time came), reversed so
        # that its next key is its last item: pop_due returns at most `limit` keys.
        self._draining: list[str] = []
        self._draining_at = 0.0
        self._places = 0
        self._stale = 0

    def __len__(self) -> int:
        return len(self._armed)

    def __contains__(self, key: str) -> bool:
        return key in self._armed

    @property
    def entries(self) -> int:
        """How many places the buckets hold, stale ones included: what the queue costs."""
        return self._places

    @property
    def times(self) -> int:
        """How many distinct due times are queued: what each heap operation costs with."""
        return len(self._heap)

    def push(self, key: str, due: float) -> None:
        """Make ``key`` due at ``due``, replacing any due time it had."""
        armed = self._armed
        replaced = armed.get(key)
        if replaced == due:
            return
        armed[key] = due
        bucket = self._buckets.get(due)
        if bucket is None:
            self._buckets[due] = [key]
            heapq.heappush(self._heap, due)
        else:
            bucket.append(key)
        self._places += 1
        if replaced is not None:
            self._one_more_stale()

    def discard(self, key: str) -> None:
        """Forget ``key``'s due time, if it has one."""
        if self._armed.pop(key, None) is not None:
            self._one_more_stale()

    def _one_more_stale(self) -> None:
        self._stale += 1
        if self._stale > COMPACT_AFTER_STALE and self._stale > self._places // 2:
            armed = self._armed
            at = self._draining_at
            self._draining = [key for key in dict.fromkeys(self._draining) if armed.get(key) == at]
            buckets: dict[float, list[str]] = {}
            for due, bucket in self._buckets.items():
                live = [key for key in dict.fromkeys(bucket) if armed.get(key) == due]
                if live:
                    buckets[due] = live
            self._buckets = buckets
            self._heap = list(buckets)
            heapq.heapify(self._heap)
            self._places = len(self._draining) + sum(map(len, buckets.values()))
            self._stale = 0

    def count_at(self, due: float) -> int:
        """About how many keys are due at ``due`` (stale places included): cheap."""
        bucket = self._buckets.get(due)
        count = 0 if bucket is None else len(bucket)
        return count + len(self._draining) if due == self._draining_at else count

    def earliest(self) -> float | None:
        """The earliest due time of any key, or None when no key is due ever."""
        armed = self._armed
        draining = self._draining
        at = self._draining_at
        while draining and armed.get(draining[-1]) != at:
            draining.pop()
            self._drop_stale(1)
        heap = self._heap
        buckets = self._buckets
        while heap:
            due = heap[0]
            bucket = buckets[due]
            if armed.get(bucket[0]) != due:
                # A key discarded and pushed again at the same time is in it twice.
                live = [key for key in dict.fromkeys(bucket) if armed.get(key) == due]
                self._drop_stale(len(bucket) - len(live))
                if not live:
                    heapq.heappop(heap)
                    del buckets[due]
                    continue
                buckets[due] = live
            # The bucket being drained was due first, unless the clock went back since.
            return min(at, due) if draining else due
        return at if draining else None

    def _drop_stale(self, count: int) -> None:
        self._stale -= count
        self._places -= count

    def pop_due(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Remove and return up to ``limit`` keys due at or before ``now``, earliest first."""
        armed = self._armed
        heap = self._heap
        due: list[tuple[str, float]] = []
        while len(due) < limit:
            draining = self._draining
            at = self._draining_at
            if draining and (at > now or (heap and heap[0] < at)):
                # The clock went back, or an earlier time was pushed: back in the heap.
                self._put_back(draining, at)
                draining = self._draining = []
            if not draining:
                if not heap or heap[0] > now:
                    break
                at = self._draining_at = heapq.heappop(heap)
                draining = self._draining = self._buckets.pop(at)
                draining.reverse()
            while draining and len(due) < limit:
                key = draining.pop()
                self._places -= 1
                if armed.get(key) != at:
                    self._stale -= 1
                    continue
                del armed[key]
                due.append((key, at))
        return due

    def _put_back(self, draining: list[str], at: float) -> None:
        draining.reverse()
        bucket = self._buckets.get(at)
        if bucket is None:
            self._buckets[at] = draining
            heapq.heappush(self._heap, at)
        else:  # pushed at this time since it was taken: those keys come after
            self._buckets[at] = draining + bucket

    def clear(self) -> None:
        """Forget every key."""
        self._heap.clear()
        self._buckets.clear()
        self._armed.clear()
        self._draining = []
        self._places = 0
        self._stale = 0
