"""Shared resources for jobs: named factories, created once, handed to every run, closed at exit.

A job package declares factories in the ``podcron.resources`` entry-point
group (``db = "myjobs.resources:database"``). Only registered names exist:
the image's owner put them there, as with ``podcron.jobs``. A factory is any
callable returning a context manager, async or sync: a function decorated
with :func:`contextlib.asynccontextmanager` or :func:`contextlib.contextmanager`,
a class whose instances are one (``aiohttp.ClientSession``), or a plain
function returning one. A factory with a parameter named ``config`` is
passed the operator's :class:`~podcron.jobconfig.ConfigSource`.

The :class:`ResourceManager` creates a resource when a run first needs it,
or at start-up for factories marked with :func:`eager`; hands the same object
to every run; retries a failing factory in the background with jittered,
capped exponential backoff (tenacity's full-jitter wait) while other
resources and jobs carry on; reports each resource's state to listeners,
``/readyz`` and metrics; and at shutdown closes every resource in reverse
creation order within a time budget.

Threads: the factory is called on the event loop's thread, and an async
context manager is entered and exited there, by one task that holds the
resource (so enter and exit happen in the same task, as anyio-based clients
require). A sync context manager is entered and exited in a thread of its
own, the same thread both times, so a slow connect never stalls the loop.
The manager itself is used from the loop's thread only; the
:class:`RunResources` mapping it hands to runs is immutable and may be read
from any thread. Whether the *object* may be used from a worker thread is
the object's own property: docs/jobs.md lists the usual ones.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import importlib.metadata
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from podcron.errors import (
    RESOURCE_GROUP,
    ResourceNotDeclared,
    ResourceTypeMismatch,
    ResourceUnavailable,
    UnknownResource,
)
from podcron.jobconfig import ConfigSource

log = logging.getLogger("podcron.resources")

GROUP = RESOURCE_GROUP
#: How long one attempt to create a resource may take before it counts as failed.
CREATE_TIMEOUT_SECONDS = 30.0
#: The backoff between failed attempts: a random wait in [0, min(cap, initial * 2**(n-1))].
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
REASON_LIMIT = 512
_EAGER = "__podcron_eager__"

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
Factory = Callable[..., AbstractAsyncContextManager[Any] | AbstractContextManager[Any]]


def eager(factory: F) -> F:
    """Mark a factory to be created at start-up rather than by the first run that needs it.

    Then a failing factory shows (``Ready=False`` on the jobs that list it) before
    any run is due, and the first run does not wait for it.
    """
    setattr(factory, _EAGER, True)
    return factory


class ResourceStatus(enum.StrEnum):
    """Where a resource is in its life."""

    PENDING = "pending"  # not needed yet (a lazy factory no run has asked for)
    CREATING = "creating"
    UP = "up"
    FAILED = "failed"  # the last attempt failed; the next one is due at retry_at
    CLOSING = "closing"
    CLOSED = "closed"
    ABANDONED = "abandoned"  # not closed: its close failed to finish within the shutdown budget


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceState:
    """One resource's state, for listeners (Ready conditions, Events), ``/readyz`` and metrics.

    Times are wall-clock seconds since the epoch. ``reason`` is one line,
    with the current Secret values redacted. ``failures`` counts every failed
    attempt since start-up. Listeners hear of every change, each retry's
    failure included: what they show should follow :attr:`failing` and
    ``reason``, not each call.
    """

    name: str
    status: ResourceStatus
    eager: bool
    since: float
    failures: int = 0
    reason: str | None = None
    retry_at: float | None = None

    @property
    def up(self) -> bool:
        """Whether runs get the object now."""
        return self.status is ResourceStatus.UP

    @property
    def failing(self) -> bool:
        """Whether its factory failed and has not succeeded since (a retry may be under way)."""
        return self.status is ResourceStatus.FAILED or (
            self.status is ResourceStatus.CREATING and self.reason is not None
        )

    def to_json(self) -> dict[str, Any]:
        """The state as ``/readyz`` shows it (times RFC 3339 UTC with milliseconds)."""
        shown: dict[str, Any] = {
            "status": self.status.value,
            "eager": self.eager,
            "since": _rfc3339(self.since),
            "failures": self.failures,
        }
        if self.reason is not None:
            shown["reason"] = self.reason
        if self.retry_at is not None:
            shown["nextAttempt"] = _rfc3339(self.retry_at)
        return shown


ResourceListener = Callable[[ResourceState], None]


class RunResources(Mapping[str, object]):
    """``ctx.resources``: the objects of the resources a job lists, by name; immutable.

    ``ctx.resources["db"]`` is the object; :meth:`typed` (``ctx.resource``)
    also checks its type. Any thread may read it.
    """

    __slots__ = ("_objects",)

    def __init__(self, objects: Mapping[str, object]) -> None:
        self._objects = dict(objects)

    def __getitem__(self, name: str) -> object:
        try:
            return self._objects[name]
        except KeyError:
            raise ResourceNotDeclared(name, self._objects) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def typed(self, name: str, kind: type[T]) -> T:
        """The object named ``name``, if it is a ``kind``; else :class:`ResourceTypeMismatch`.

        ``kind`` is checked with ``isinstance``: a class, or a ``runtime_checkable`` Protocol.
        """
        value = self[name]
        if not isinstance(value, kind):
            shown = type(value)
            raise ResourceTypeMismatch(
                f"resource {name!r} is a {shown.__module__}.{shown.__qualname__}, "
                f"not a {kind.__module__}.{kind.__qualname__}"
            )
        return value

    def __repr__(self) -> str:
        return f"RunResources({sorted(self._objects)})"


#: What jobs without ``spec.resources`` get: nothing, shared.
NO_RESOURCES = RunResources({})


def discover(group: str = GROUP) -> dict[str, Callable[[], Factory]]:
    """The factories registered in ``group``, by name, each as a loader that imports it."""
    return {ep.name: ep.load for ep in importlib.metadata.entry_points(group=group)}


class _EnterInThread:
    """A sync ``__enter__`` in a thread that the loop may give up on.

    If the loop stopped waiting (the attempt timed out, or shutdown came)
    before the thread finished, the thread closes what it created itself.
    """

    def __init__(self, manager: AbstractContextManager[Any]) -> None:
        self._manager = manager
        self._lock = threading.Lock()
        self._abandoned = False
        self._entered = False

    def __call__(self) -> Any:
        value = self._manager.__enter__()
        with self._lock:
            if not self._abandoned:
                self._entered = True
                return value
        self._manager.__exit__(None, None, None)
        return None

    def abandon(self) -> bool:
        """Give up waiting; True if the thread had already handed the object over."""
        with self._lock:
            self._abandoned = True
            return self._entered


@dataclass(eq=False)
class _Slot:
    name: str
    load: Callable[[], Factory]
    eager: bool = False
    status: ResourceStatus = ResourceStatus.PENDING
    since: float = field(default_factory=time.time)
    failures: int = 0
    reason: str | None = None
    retry_at: float | None = None
    value: Any = None
    # The holder task: creates, retries, keeps and closes the resource.
    task: asyncio.Task[None] | None = None
    # Resolved when the attempt in progress ends, whatever its outcome: runs wait on it.
    attempt: asyncio.Future[None] | None = None
    close_requested: asyncio.Event = field(default_factory=asyncio.Event)
    # A sync context manager's own thread, and the thread work still running in it.
    thread: ThreadPoolExecutor | None = None
    busy: asyncio.Future[Any] | None = None
    # The last reason logged, and the last state listeners heard of.
    logged_reason: str | None = None
    notified: ResourceState | None = None

    def state(self) -> ResourceState:
        return ResourceState(
            name=self.name,
            status=self.status,
            eager=self.eager,
            since=self.since,
            failures=self.failures,
            reason=self.reason,
            retry_at=self.retry_at,
        )


class ResourceManager:
    """Creates, shares, retries and closes the resources of ``factories``; loop thread only.

    ``factories`` maps names to loaders (see :func:`discover`). ``config`` is
    passed to factories that take a ``config`` parameter, and redacts failure
    reasons.
    """

    def __init__(
        self,
        factories: Mapping[str, Callable[[], Factory]],
        *,
        config: ConfigSource | None = None,
        listeners: Iterable[ResourceListener] = (),
        create_timeout: float = CREATE_TIMEOUT_SECONDS,
        backoff_initial: float = BACKOFF_INITIAL_SECONDS,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
    ) -> None:
        self._slots = {name: _Slot(name, load) for name, load in factories.items()}
        self._config = config or ConfigSource()
        self._listeners = list(listeners)
        self._create_timeout = create_timeout
        self._wait = wait_random_exponential(multiplier=backoff_initial, max=backoff_cap)
        self._created: list[_Slot] = []
        self._views: dict[tuple[str, ...], RunResources] = {(): NO_RESOURCES}
        self._closing = False

    # -- what the controller asks ----------------------------------------

    def add_listener(self, listener: ResourceListener) -> None:
        """Call ``listener`` with a resource's state whenever it changes; it must not block."""
        self._listeners.append(listener)

    def check(self, names: Sequence[str]) -> None:
        """Raise :class:`UnknownResource` for the first name no factory is registered under."""
        for name in names:
            if name not in self._slots:
                raise UnknownResource(name, self._slots)

    def states(self) -> list[ResourceState]:
        """Every resource's state, by name."""
        return [self._slots[name].state() for name in sorted(self._slots)]

    def readyz_lines(self) -> list[str]:
        """One line per resource for ``/readyz?verbose``: ``[+]resource:http up``."""
        lines = []
        for state in self.states():
            line = f"[{'+' if state.up else '-'}]resource:{state.name} {state.status.value}"
            if state.failures:
                plural = "" if state.failures == 1 else "s"
                line += f" ({state.failures} failed attempt{plural})"
            if state.reason is not None:
                line += f": {state.reason}"
            if state.retry_at is not None:
                line += f"; next attempt at {_rfc3339(state.retry_at)}"
            lines.append(line)
        return lines

    def report(self) -> dict[str, dict[str, Any]]:
        """The states as ``/readyz`` details: ``{"db": {"status": "up", ...}}``."""
        return {state.name: state.to_json() for state in self.states()}

    def start(self) -> None:
        """Import every factory; begin creating the eager ones (and those that fail to import).

        Returns at once: creation and its retries go on in the background.
        """
        for slot in self._slots.values():
            try:
                factory = slot.load()
            except Exception as error:
                # Whether it is eager cannot be known: retry it, so that the broken
                # import shows in /readyz and on the jobs that list it.
                log.warning("resource %s: cannot import its factory: %s", slot.name, error)
                self._spawn(slot)
                continue
            slot.load = _loaded(factory)
            slot.eager = bool(getattr(factory, _EAGER, False))
            if slot.eager:
                self._spawn(slot)

    # -- what runs ask ----------------------------------------------------

    async def acquire(self, names: tuple[str, ...]) -> RunResources:
        """The objects of ``names``, created first if need be: ``ctx.resources`` of one run.

        Waits for an attempt in progress; raises :class:`ResourceUnavailable`
        at once for a resource whose last attempt failed (the next one is
        already scheduled) or while shutting down, :class:`UnknownResource`
        for a name no factory has.
        """
        view = self._views.get(names)
        if view is not None:
            return view
        objects = {name: await self._acquire_one(name) for name in names}
        view = RunResources(objects)
        if not self._closing:
            # Created resources stay until shutdown: every later run takes this.
            self._views[names] = view
        return view

    def ready(self, names: tuple[str, ...]) -> RunResources | None:
        """:meth:`acquire`'s answer if every one of ``names`` is created already, else None.

        No await: what nearly every run of a job with resources takes.
        """
        return self._views.get(names)

    async def _acquire_one(self, name: str) -> object:
        slot = self._slots.get(name)
        if slot is None:
            raise UnknownResource(name, self._slots)
        if self._closing:
            raise ResourceUnavailable(name, "the operator is shutting down")
        if slot.status is ResourceStatus.PENDING:
            self._spawn(slot)
        if slot.attempt is not None and not slot.attempt.done():
            # Shielded: a run cancelled while waiting must not cancel the attempt.
            await asyncio.shield(slot.attempt)
        if slot.status is ResourceStatus.UP:
            return slot.value
        if self._closing or slot.status not in (ResourceStatus.FAILED, ResourceStatus.CREATING):
            raise ResourceUnavailable(name, "the operator is shutting down")
        if slot.retry_at is None:  # the next attempt has begun already
            raise ResourceUnavailable(name, f"{slot.reason}; retrying now")
        raise ResourceUnavailable(name, f"{slot.reason}; next attempt at {_rfc3339(slot.retry_at)}")

    # -- the holder task --------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        self._begin_attempt(slot)
        # A context of its own: a resource created for a run must not inherit the run's
        # span or log fields, which would make the factory's own spans part of that run.
        slot.task = asyncio.get_running_loop().create_task(
            self._hold(slot), name=f"podcron resource {slot.name}", context=contextvars.Context()
        )

    def _begin_attempt(self, slot: _Slot) -> None:
        if slot.attempt is None or slot.attempt.done():
            slot.attempt = asyncio.get_running_loop().create_future()
        slot.retry_at = None
        # A retry is news to nobody: listeners hear of its outcome.
        self._set(slot, ResourceStatus.CREATING, notify=slot.reason is None)

    async def _hold(self, slot: _Slot) -> None:
        retrying = AsyncRetrying(
            wait=self._wait,
            retry=retry_if_exception_type(Exception),
            before_sleep=lambda state: self._retry_scheduled(slot, state),
            sleep=asyncio.sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    manager = await self._create(slot)
        finally:
            if slot.attempt is not None and not slot.attempt.done():
                slot.attempt.set_result(None)
        await slot.close_requested.wait()
        await self._exit(slot, manager)

    async def _create(
        self, slot: _Slot
    ) -> AbstractAsyncContextManager[Any] | AbstractContextManager[Any]:
        """One attempt: the resource is up when it returns; raises what went wrong."""
        self._begin_attempt(slot)
        try:
            manager = _call(slot.load(), self._config)
            if isinstance(manager, AbstractAsyncContextManager):
                async with asyncio.timeout(self._create_timeout):
                    slot.value = await manager.__aenter__()
            else:
                slot.value = await self._enter_in_thread(slot, manager)
        except Exception as error:
            slot.failures += 1
            slot.reason = self._reason(error)
            # Listeners hear of it with the next attempt's time, from _retry_scheduled.
            self._set(slot, ResourceStatus.FAILED, notify=False)
            assert slot.attempt is not None
            slot.attempt.set_result(None)
            raise
        slot.reason = slot.retry_at = slot.logged_reason = None
        self._created.append(slot)
        self._set(slot, ResourceStatus.UP)
        assert slot.attempt is not None
        slot.attempt.set_result(None)
        after = f" after {slot.failures} failed attempts" if slot.failures else ""
        log.info("resource %s created%s", slot.name, after)
        return manager

    async def _enter_in_thread(self, slot: _Slot, manager: AbstractContextManager[Any]) -> Any:
        if slot.busy is not None and not slot.busy.done():
            raise TimeoutError(
                "the previous attempt still runs in the factory's thread (its __enter__ hangs)"
            )
        if slot.thread is None:
            slot.thread = ThreadPoolExecutor(1, thread_name_prefix=f"podcron-resource-{slot.name}")
        enter = _EnterInThread(manager)
        loop = asyncio.get_running_loop()
        slot.busy = loop.run_in_executor(slot.thread, enter)
        try:
            async with asyncio.timeout(self._create_timeout):
                return await asyncio.shield(slot.busy)
        except BaseException:
            if enter.abandon():
                # Handed over just as we gave up: nobody will use it, so close it there.
                slot.thread.submit(manager.__exit__, None, None, None)
            raise

    def _retry_scheduled(self, slot: _Slot, state: RetryCallState) -> None:
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        slot.retry_at = time.time() + delay
        # A line when the reason changes, not one per attempt: a database down for a
        # day would log every minute. /readyz and the metrics count every attempt.
        if slot.reason != slot.logged_reason:
            slot.logged_reason = slot.reason
            log.warning(
                "resource %s: attempt %d failed: %s; retrying in %.1fs",
                slot.name,
                slot.failures,
                slot.reason,
                delay,
            )
        self._set(slot, ResourceStatus.FAILED)

    async def _exit(
        self, slot: _Slot, manager: AbstractAsyncContextManager[Any] | AbstractContextManager[Any]
    ) -> None:
        try:
            if isinstance(manager, AbstractAsyncContextManager):
                await manager.__aexit__(None, None, None)
            else:
                assert slot.thread is not None
                exiting = asyncio.get_running_loop().run_in_executor(
                    slot.thread, manager.__exit__, None, None, None
                )
                # Shielded: a thread cannot be cancelled; past the budget it is abandoned.
                await asyncio.shield(exiting)
        except Exception as error:
            slot.reason = f"closed with an error: {self._reason(error)}"
            log.warning("resource %s: %s", slot.name, slot.reason)
        else:
            log.info("resource %s closed", slot.name)
        self._set(slot, ResourceStatus.CLOSED)

    # -- shutdown ---------------------------------------------------------

    async def close(self, budget: float) -> None:
        """Close every created resource, the last created first, each exactly once.

        Call it after the last run has ended. Resources still being created are
        given up; a close still running when ``budget`` seconds are spent is abandoned
        (status ``abandoned``), and so are the ones after it.
        """
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        self._views.clear()
        unfinished = set()
        for slot in self._slots.values():
            if slot.status is not ResourceStatus.UP and slot.task is not None:
                slot.task.cancel()
                unfinished.add(slot.task)
                slot.reason = "never created: the operator shut down"
                self._set(slot, ResourceStatus.CLOSED)
        if unfinished:
            # Quick: their awaits are cancellable (a thread's, shielded, is given up).
            await asyncio.wait(unfinished, timeout=budget)
        for slot in reversed(self._created):
            assert slot.task is not None
            remaining = deadline - loop.time()
            if remaining > 0:
                self._set(slot, ResourceStatus.CLOSING)
                slot.close_requested.set()
                done, _ = await asyncio.wait({slot.task}, timeout=remaining)
                if done:
                    continue
            slot.task.cancel()
            slot.reason = f"not closed within the shutdown budget ({budget:g}s)"
            log.warning("resource %s: %s", slot.name, slot.reason)
            self._set(slot, ResourceStatus.ABANDONED)
        for slot in self._slots.values():
            if slot.thread is not None:
                # A thread stuck in a factory cannot be stopped; work already queued
                # (a late close) still runs.
                slot.thread.shutdown(wait=False)

    # -- helpers ----------------------------------------------------------

    def _set(self, slot: _Slot, status: ResourceStatus, *, notify: bool = True) -> None:
        if slot.status is not status:
            slot.since = time.time()
        slot.status = status
        state = slot.state()
        if not notify or state == slot.notified:
            return
        slot.notified = state
        for listener in self._listeners:
            try:
                listener(state)
            except Exception:
                log.exception("a resource listener failed on %s", slot.name)

    def _reason(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError) and not str(error):
            text = f"TimeoutError: not created within {self._create_timeout:g}s"
        else:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        text = self._config.redact(" ".join(text.split()))
        return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


def _loaded(factory: Factory) -> Callable[[], Factory]:
    return lambda: factory


def _call(
    factory: Factory, config: ConfigSource
) -> AbstractAsyncContextManager[Any] | AbstractContextManager[Any]:
    """Call ``factory`` (with ``config=`` if it takes it); refuse what is no context manager."""
    try:
        takes_config = "config" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes_config = False
    made = factory(config=config) if takes_config else factory()
    # Both ABCs recognise any class with the two methods; async wins where both are.
    if isinstance(made, AbstractAsyncContextManager | AbstractContextManager):
        return made
    if inspect.iscoroutine(made):
        made.close()  # never awaited: no "coroutine was never awaited" warning
        _refuse(
            "the factory is an async def returning a coroutine; decorate it with "
            "@contextlib.asynccontextmanager and yield the resource"
        )
    kind = type(made)
    _refuse(f"the factory returned a {kind.__module__}.{kind.__qualname__}, not a context manager")


def _refuse(message: str) -> NoReturn:
    raise TypeError(message)


def _rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
