"""Which keys fall due when: a heap of due times with lazy deletion. Pure: no clock, no loop.

The engine keeps one timer for every job by asking this queue for its
earliest due time. Entries are plain ``(due, generation, key)`` tuples that
hold no reference to a job, so the garbage collector untracks them rather
than keep one more long-lived object per run (which would make its full
passes frequent at tens of thousands of jobs). Replacing or discarding a key
leaves its old entry behind, marked stale by the generation, so both are
O(1) apart from the push; stale entries are dropped as they surface, and the
heap is rebuilt once they dominate, so a churn of updates cannot grow it
without bound.
"""

from __future__ import annotations

import heapq
import itertools

# Rebuild the heap once this many entries are stale and they are most of it.
COMPACT_AFTER_STALE = 1024


class DueQueue:
    """Keys with one due time each (seconds, any monotone scale); the earliest first."""

    __slots__ = ("_armed", "_generations", "_heap", "_stale")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        # The generation of each key's live entry; any other entry of the key is stale.
        self._armed: dict[str, int] = {}
        self._generations = itertools.count()
        self._stale = 0

    def __len__(self) -> int:
        return len(self._armed)

    def __contains__(self, key: str) -> bool:
        return key in self._armed

    @property
    def entries(self) -> int:
        """How many entries the heap holds, stale ones included: what the queue costs."""
        return len(self._heap)

    def push(self, key: str, due: float) -> None:
        """Make ``key`` due at ``due``, replacing any due time it had."""
        generation = next(self._generations)
        replaced = self._armed.get(key) is not None
        self._armed[key] = generation
        heapq.heappush(self._heap, (due, generation, key))
        if replaced:
            self._one_more_stale()

    def discard(self, key: str) -> None:
        """Forget ``key``'s due time, if it has one."""
        if self._armed.pop(key, None) is not None:
            self._one_more_stale()

    def _one_more_stale(self) -> None:
        self._stale += 1
        if self._stale > COMPACT_AFTER_STALE and self._stale > len(self._heap) // 2:
            armed = self._armed
            self._heap = [entry for entry in self._heap if armed.get(entry[2]) == entry[1]]
            heapq.heapify(self._heap)
            self._stale = 0

    def earliest(self) -> float | None:
        """The earliest due time of any key, or None when no key is due ever."""
        heap = self._heap
        armed = self._armed
        while heap and armed.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Remove and return up to ``limit`` keys due at or before ``now``, earliest first."""
        heap = self._heap
        armed = self._armed
        due: list[tuple[str, float]] = []
        while len(due) < limit and heap and heap[0][0] <= now:
            at, generation, key = heapq.heappop(heap)
            if armed.get(key) != generation:
                self._stale -= 1
                continue
            del armed[key]
            due.append((key, at))
        return due

    def clear(self) -> None:
        """Forget every key."""
        self._heap.clear()
        self._armed.clear()
        self._stale = 0
