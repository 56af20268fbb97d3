"""A run's timeout: its task cancelled at the deadline, and that cancellation told apart.

What :func:`asyncio.timeout` does, for the one use the engine makes of it, at a
quarter of the cost: about 9 µs a run there (a ``Timeout`` object, two
coroutine calls for ``async with``, a timer that copies the current context),
and every run of a job with ``timeoutSeconds`` pays it before its body starts.
Here the timer is armed with one shared empty context (its callback reads no
context variable) and no coroutine is entered. The rules are asyncio's: the
deadline cancels the run's task; when the body ends, a cancellation that
came from the deadline, and only from it, becomes :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import contextvars

# The timer's callback reads no context variable: one empty context serves every run
# (asyncio would copy the current one for each).
_CONTEXT = contextvars.Context()


class RunTimeout:
    """Armed on creation, in the run's task, to cancel it ``seconds`` from now."""

    __slots__ = ("_cancelling", "_handle", "_task", "expired")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a run's timeout is armed inside its task")
        self._task = task
        # Cancellations already asked of the task are not ours: see end().
        self._cancelling = task.cancelling()
        #: Whether the deadline came (and cancelled the task) before the body ended.
        self.expired = False
        self._handle = asyncio.get_running_loop().call_later(
            seconds, self._expire, context=_CONTEXT
        )

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def end(self, error: BaseException | None) -> None:
        """The body has ended, raising ``error`` (None: it returned): disarm.

        Raises :class:`TimeoutError` in place of the :class:`asyncio.CancelledError`
        the deadline caused, unless someone else also cancelled the task since:
        theirs must reach them, as with :func:`asyncio.timeout`.
        """
        self._handle.cancel()
        if (
            self.expired
            and self._task.uncancel() <= self._cancelling
            and isinstance(error, asyncio.CancelledError)
        ):
            raise TimeoutError from error
