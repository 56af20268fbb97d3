"""What a job receives when it runs: the :class:`JobContext`."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Generator, Mapping
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate

from podcron.jobconfig import NO_CONFIG, JobConfig
from podcron.resources import NO_RESOURCES, RunResources

T = TypeVar("T")


class Trigger(enum.StrEnum):
    """Why a run started."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    CATCH_UP = "catch-up"


class Cancellation:
    """A cancellation flag that both coroutines and threads can watch.

    ``await ctx.cancelled`` (or ``await ctx.cancelled.wait()``) suits async jobs;
    ``if ctx.cancelled:`` suits plain ``def`` jobs in worker threads, which
    cannot be interrupted and must poll. Only the event loop's thread sets it.
    """

    __slots__ = ("_async_event", "_flag")

    def __init__(self) -> None:
        # A plain attribute is enough for threads that poll it (the GIL makes
        # the write visible), and costs far less per run than a threading.Event.
        self._flag = False
        self._async_event: asyncio.Event | None = None

    def set(self) -> None:
        """Signal cancellation (called on the event loop's thread)."""
        self._flag = True
        if self._async_event is not None:
            self._async_event.set()

    def is_set(self) -> bool:
        """Whether cancellation was signalled."""
        return self._flag

    def __bool__(self) -> bool:
        return self._flag

    async def wait(self) -> None:
        """Return once cancellation is signalled."""
        if self._async_event is None:
            # Created lazily: most runs never wait, and an Event binds to the
            # running loop on first use.
            self._async_event = asyncio.Event()
            if self._flag:
                self._async_event.set()
        await self._async_event.wait()

    def __await__(self) -> Generator[Any, None, None]:
        return self.wait().__await__()


class JobContext(NamedTuple):
    """Everything a job knows about the run it is in. Read-only.

    ``args`` is the ScheduledJob's ``spec.args``; ``deadline`` is the wall-clock
    instant the run times out at: ``timeoutSeconds`` after the job was called
    (``None`` without one; 9999-12-31 for one that reaches past the calendar).

    ``resources`` holds the shared objects of the resources the job's
    ``spec.resources`` lists, the same objects for every run (:meth:`resource`
    also checks the type); ``config`` is the job configuration and secrets
    mounted into the operator, read at its first access in the run and then
    kept for the rest of it. Both are read-only and may be read from any thread.

    A named tuple, like the engine's events, and for the same reason: one is
    made for every run, and a frozen dataclass would set each of its fields
    through ``object.__setattr__`` (docs/performance.md). It is as immutable;
    read it by name.
    """

    job_id: str
    namespace: str
    name: str
    trigger: Trigger
    scheduled_time: datetime
    args: Mapping[str, Any]
    log: logging.LoggerAdapter[logging.Logger]
    deadline: datetime | None
    # No default: one shared default would cancel every run that uses it.
    cancelled: Cancellation
    trace_context: otel_context.Context | None = None
    resources: RunResources = NO_RESOURCES
    config: JobConfig = NO_CONFIG

    def resource(self, name: str, kind: type[T]) -> T:
        """``resources[name]``, checked to be a ``kind`` (a class or a runtime-checkable Protocol).

        Raises :class:`podcron.errors.ResourceNotDeclared` (a ``KeyError``) for a
        name ``spec.resources`` does not list, and
        :class:`podcron.errors.ResourceTypeMismatch` (a ``TypeError``) for another type.
        """
        return self.resources.typed(name, kind)

    def trace_headers(self) -> dict[str, str]:
        """W3C trace headers (``traceparent``) for the job's own downstream calls.

        Empty when tracing is off, so callers can always merge it into headers.
        """
        headers: dict[str, str] = {}
        propagate.inject(headers, context=self.trace_context)
        return headers
