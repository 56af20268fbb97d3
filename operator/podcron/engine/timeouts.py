"""A run's timeout: its task cancelled at the deadline, and that cancellation told apart.

What :func:`asyncio.timeout` does, for the one use the engine makes of it, at a
quarter of the cost: about 9 µs a run there (a ``Timeout`` object, two
coroutine calls for ``async with``, a timer that copies the current context),
and every run of a job with ``timeoutSeconds`` pays it before its body starts.
Here the timer is armed with one shared empty context (its callback reads no
context variable) and no coroutine is entered. The rules are asyncio's: the
deadline cancels the run's task; when the body ends, a cancellation that
came from the deadline, and only from it, becomes :class:`TimeoutError`.

The deadline is taken when the timeout is made; its timer may be armed later
(:meth:`RunTimeout.arm`): while the runs due at one instant are being started,
the engine arms their timers once they all have (engine/burst.py), since pushing
a timer onto the loop's heap is work the body does not wait for.
"""

from __future__ import annotations

import asyncio
import contextvars

# The timer's callback reads no context variable: one empty context serves every run
# (asyncio would copy the current one for each).
_CONTEXT = contextvars.Context()


class RunTimeout:
    """Made in the run's task, with its deadline ``seconds`` from now; armed then or later."""

    __slots__ = ("_cancelling", "_deadline", "_handle", "_task", "expired")

    def __init__(self, seconds: float, *, armed: bool = True) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a run's timeout is armed inside its task")
        #: The run's task; None once the body has ended.
        self._task: asyncio.Task[object] | None = task
        # Cancellations already asked of the task are not ours: see end().
        self._cancelling = task.cancelling()
        #: Whether the deadline came (and cancelled the task) before the body ended.
        self.expired = False
        self._deadline = asyncio.get_running_loop().time() + seconds
        self._handle: asyncio.TimerHandle | None = None
        if armed:
            self.arm()

    def arm(self) -> None:
        """Set the timer for the deadline taken at creation (past already: it fires at once).

        Nothing once the body has ended: its run is over, and no timer is left behind.
        """
        if self._task is not None and self._handle is None:
            self._handle = asyncio.get_running_loop().call_at(
                self._deadline, self._expire, context=_CONTEXT
            )

    def _expire(self) -> None:
        task = self._task
        if task is not None:
            self.expired = True
            task.cancel()

    def end(self, error: BaseException | None) -> None:
        """The body has ended, raising ``error`` (None: it returned): disarm.

        Raises :class:`TimeoutError` in place of the :class:`asyncio.CancelledError`
        the deadline caused, unless someone else also cancelled the task since:
        theirs must reach them, as with :func:`asyncio.timeout`.
        """
        if self._handle is not None:
            self._handle.cancel()
        task, self._task = self._task, None  # a timeout armed later must not keep it
        if (
            self.expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and isinstance(error, asyncio.CancelledError)
        ):
            raise TimeoutError from error
