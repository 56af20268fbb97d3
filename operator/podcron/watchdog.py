"""A watchdog that notices the event loop held by one task, and names it.

An ``async def`` job that calls blocking code (``time.sleep``, a synchronous
HTTP client, a long computation) holds the event loop's thread, and every
other job waits for it. The loop cannot notice this itself: it is the one held.

So the loop keeps a heartbeat, a callback due every :data:`HEARTBEAT_SECONDS`
that records how late it ran (the loop's lag), and a daemon thread wakes as
often to look at it. When the last beat is older than :data:`STALL_SECONDS`
past its due time and the same task was running at two looks in a row, that
task is stuck inside one step: the thread reads which one
(``asyncio.current_task(loop)`` is a dictionary read, safe from another
thread) and logs a WARNING naming it, at most once per
:data:`WARN_INTERVAL_SECONDS` for the same name. A loop that is late because
it has too much to do, or held by a plain callback, only shows in the lag.

Nothing here runs per job run: the cost is the heartbeat and the thread's
wake-ups, four of each a second, about 0.1% of a CPU on a busy machine. So a
block shorter than about three quarters of a second may go unnamed (it still
shows in the lag of the heartbeat that fell due during it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("podcron.watchdog")

#: How often the loop beats and the thread looks.
HEARTBEAT_SECONDS = 0.25
#: How long past its due time a missing beat means a held loop.
STALL_SECONDS = 0.25
#: The same holder is named at most once per this long.
WARN_INTERVAL_SECONDS = 60.0
#: The key under which tasks that are no job's run are rate-limited together.
_OTHER_TASK = ""


class LoopWatchdog:
    """Watches ``loop`` from a daemon thread; start it on the loop's thread.

    ``holder`` turns the task that held the loop into what the warning names
    (a job id), or ``None`` for a task that is nobody's in particular.
    ``on_lag`` receives every beat's lag in seconds, on the loop's thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        holder: Callable[[asyncio.Task[object]], str | None],
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._loop = loop
        self._holder = holder
        self._on_lag = on_lag
        self._due = 0.0
        # When the loop last beat (monotonic, written by the loop, read by the thread).
        self._last_beat = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        # Only the watchdog thread touches this.
        self._warned: dict[str, float] = {}
        self._thread = threading.Thread(target=self._watch, name="podcron-watchdog", daemon=True)

    def start(self) -> None:
        """Begin beating and watching."""
        self._last_beat = time.monotonic()
        self._due = self._loop.time() + HEARTBEAT_SECONDS
        self._handle = self._loop.call_at(self._due, self._beat)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and let the thread end (call on the loop's thread)."""
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        now = self._loop.time()
        self._last_beat = time.monotonic()
        if self._on_lag is not None:
            self._on_lag(max(0.0, now - self._due))
        self._due = now + HEARTBEAT_SECONDS
        self._handle = self._loop.call_at(self._due, self._beat)

    def _watch(self) -> None:
        # The task seen holding the loop at the last look, and the beat it held up.
        suspect: asyncio.Task[object] | None = None
        suspect_beat = 0.0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if self._loop.is_closed():
                return
            last_beat = self._last_beat
            held = time.monotonic() - last_beat - HEARTBEAT_SECONDS
            if held < STALL_SECONDS or not self._loop.is_running():
                suspect = None
                continue
            task = asyncio.current_task(self._loop)
            # A loop merely overloaded runs thousands of short steps, and any of
            # them may be current at one look. One task held it only if it is
            # current at two looks with no beat in between: a task's next step
            # always comes after a due heartbeat.
            if task is not None and task is suspect and last_beat == suspect_beat:
                self._held_by(task, held)
            suspect, suspect_beat = task, last_beat

    def _held_by(self, task: asyncio.Task[object], held: float) -> None:
        job_id = self._holder(task)
        key = job_id if job_id is not None else _OTHER_TASK
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_INTERVAL_SECONDS) < WARN_INTERVAL_SECONDS:
            return
        self._warned[key] = now
        if len(self._warned) > 1024:  # jobs come and go: drop the ones whose interval passed
            self._warned = {
                k: t for k, t in self._warned.items() if now - t < WARN_INTERVAL_SECONDS
            }
        if job_id is not None:
            log.warning(
                "job %s has held the event loop for %.1fs, so every other job waits: an async"
                " job must not call blocking code (make it a plain def, or use"
                " asyncio.to_thread); named at most once a minute",
                job_id,
                held,
                extra={"job_id": job_id},
            )
        else:
            log.warning(
                "task %r, not a job's run, has held the event loop for %.1fs",
                task.get_name(),
                held,
            )
