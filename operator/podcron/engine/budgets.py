"""What runs may take: run slots, worker threads, the manual-run budget, abandoned threads.

Each budget bounds what one kind of caller can take from the others:

* ``max_concurrent_runs``: scheduled and catch-up runs active at once;
  further ones queue for a slot.
* ``max_manual_runs``: manual runs active at once, beside those slots, so
  that manual runs never delay scheduled ones; further manual runs are
  refused with :class:`TooManyManualRuns`.
* ``worker_threads``: threads for the bodies of scheduled plain ``def``
  runs; further ones queue. A thread abandoned by its run is replaced, up
  to ``worker_threads`` replacements at once. Manual runs bring their own
  threads (one each, within ``max_manual_runs``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures

from podcron.engine.runs import ActiveRun
from podcron.errors import TooManyManualRuns

#: What a refused manual run's caller is told to wait (``Retry-After``).
MANUAL_RETRY_AFTER_SECONDS = 1


class Slots:
    """A counting semaphore whose free slot is taken without a coroutine. Loop thread only.

    ``asyncio.Semaphore.acquire`` is a coroutine even when a slot is free, and
    every scheduled run takes one or two slots: :meth:`try_take` is a plain
    call. A slot given back goes straight to the longest waiter, so a free slot
    means nobody waits, and one taken at once never overtakes a waiter.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        """Take a slot if one is free now; whether it was."""
        if self._free:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in turn for one given back if none is free."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot as it was cancelled: the next one has it
            elif waiter in self._waiters:  # give() drops cancelled waiters itself
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the longest waiter, or to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class RunBudgets:
    """The engine's budgets, and the thread pool they size. Loop thread only."""

    def __init__(self, *, max_concurrent_runs: int, max_manual_runs: int, worker_threads: int):
        for name, value in (
            ("max_concurrent_runs", max_concurrent_runs),
            ("max_manual_runs", max_manual_runs),
            ("worker_threads", worker_threads),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._slots = Slots(max_concurrent_runs)
        self._max_manual_runs = max_manual_runs
        self._manual_runs = 0
        self._thread_slots = Slots(worker_threads)
        self._max_replacements = worker_threads
        self._replacements = 0
        #: Threads that outlive the run they belong to.
        self.abandoned = 0
        # Enough threads that a body admitted by the budgets above never waits
        # inside the pool: scheduled bodies, their replacements, manual bodies.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            2 * worker_threads + max_manual_runs, thread_name_prefix="podcron-job"
        )

    def admit_manual(self) -> None:
        """Count one more manual run, or raise :class:`TooManyManualRuns`."""
        if self._manual_runs >= self._max_manual_runs:
            raise TooManyManualRuns(
                f"{self._manual_runs} manual runs are active, as many as maxManualRuns"
                f" allows; retry in {MANUAL_RETRY_AFTER_SECONDS}s",
                retry_after_seconds=MANUAL_RETRY_AFTER_SECONDS,
            )
        self._manual_runs += 1

    def take(self, run: ActiveRun) -> bool:
        """Take at once what a scheduled run needs and is free; whether it now has it all.

        A run slot, and a thread for a def. Manual runs take neither (they have
        their own budget): only call this, and :meth:`acquire`, for others.
        """
        if not run.holds_slot:
            run.holds_slot = self._slots.try_take()
            if not run.holds_slot:
                return False
        if not run.is_async and not run.holds_thread:
            run.holds_thread = self._thread_slots.try_take()
            return run.holds_thread
        return True

    async def acquire(self, run: ActiveRun) -> None:
        """Wait, in turn, for what :meth:`take` could not give the run."""
        if not run.holds_slot:
            await self._slots.take()
            run.holds_slot = True
        if not run.is_async and not run.holds_thread:
            await self._thread_slots.take()
            run.holds_thread = True

    def release(self, run: ActiveRun) -> None:
        """The run's body has returned (or never started): give back what it held."""
        if run.holds_slot:
            self._slots.give()
        if run.holds_thread:
            self._thread_slots.give()
        if run.manual:
            self._manual_runs -= 1

    def abandon(self, run: ActiveRun) -> None:
        """The run's thread outlived its outcome: its place goes to the others, within a bound.

        A thread cannot be killed, and each abandoned one is one more thread.
        """
        run.abandoned = True
        self.abandoned += 1
        if run.holds_thread and self._replacements < self._max_replacements:
            run.holds_thread = False
            self._replacements += 1
            self._thread_slots.give()

    def returned(self, run: ActiveRun) -> None:
        """An abandoned run's thread returned at last."""
        self.abandoned -= 1
        if not run.holds_thread:
            self._replacements -= 1
