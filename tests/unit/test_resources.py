"""Shared resources: created once, handed to every run, retried with backoff, closed in reverse.

Real async and sync context managers; the backoff runs on the event loop's clock, which
the tests move forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from podcron.errors import (
    ResourceNotDeclared,
    ResourceTypeMismatch,
    ResourceUnavailable,
    UnknownResource,
)
from podcron.jobconfig import ConfigSource
from podcron.resources import (
    NO_RESOURCES,
    ResourceManager,
    ResourceState,
    ResourceStatus,
    _EnterInThread,
    discover,
    eager,
)

from ..waiting import load_factor, until

DEADLINE = 5.0


class LoopClock:
    """Holds the running loop's clock still; only :meth:`advance` moves it.

    A retry's jittered wait can be a few milliseconds: with real time passing
    too, it could fire before a test saw the failure before it. Loop timers
    never fire on their own here, so the tests poll with :meth:`until`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = loop.time()
        monkeypatch.setattr(loop, "time", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def until(self, condition: Callable[[], Any], within: float = DEADLINE) -> Any:
        """Waits on real time for ``condition``, yielding to the loop between polls."""
        deadline = time.monotonic() + within * load_factor()
        while not (result := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {within}s waiting for {condition}")
            await asyncio.sleep(0)
        return result


@pytest.fixture
async def clock(monkeypatch: pytest.MonkeyPatch) -> LoopClock:
    return LoopClock(asyncio.get_running_loop(), monkeypatch)


class Journal:
    """What the factories did, in order: ("enter", name), ("exit", name), ..."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.threads: dict[tuple[str, str], str] = {}

    def count(self, what: str, name: str) -> int:
        return self.calls.count((what, name))

    def async_factory(self, name: str) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[object]:
            self.calls.append(("enter", name))
            try:
                yield object()
            finally:
                self.calls.append(("exit", name))

        return factory

    def sync_factory(self, name: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        @contextlib.contextmanager
        def factory() -> Iterator[object]:
            self.calls.append(("enter", name))
            self.threads["enter", name] = threading.current_thread().name
            try:
                yield object()
            finally:
                self.calls.append(("exit", name))
                self.threads["exit", name] = threading.current_thread().name

        return factory


def loaders(**factories: Callable[..., Any]) -> dict[str, Callable[[], Any]]:
    """Factories as the manager takes them: loaders, as entry points are."""
    return {name: _loader(factory) for name, factory in factories.items()}


def _loader(factory: Callable[..., Any]) -> Callable[[], Any]:
    return lambda: factory


class Flaky:
    """An async factory failing ``failures`` times, then working; notes each attempt's loop time."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self.closed = 0

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[str]:
        self.attempts.append(asyncio.get_running_loop().time())
        if len(self.attempts) <= self.failures:
            raise ConnectionRefusedError("db:5432 refused")
        try:
            yield "pool"
        finally:
            self.closed += 1


# -- sharing ------------------------------------------------------------------------------


async def test_one_object_is_created_on_first_use_and_shared_by_every_run() -> None:
    journal = Journal()
    manager = ResourceManager(loaders(http=journal.async_factory("http")))
    manager.start()
    assert journal.calls == [], "a lazy resource waits for its first use"
    assert manager.states()[0].status is ResourceStatus.PENDING
    # Two jobs, a hundred runs between them, some concurrent with the creation.
    first = await asyncio.gather(*(manager.acquire(("http",)) for _ in range(50)))
    later = [await manager.acquire(("http",)) for _ in range(50)]
    objects = {id(view["http"]) for view in first + later}
    assert len(objects) == 1
    assert journal.calls == [("enter", "http")]
    assert manager.states()[0].up
    await manager.close(5.0)
    assert journal.calls == [("enter", "http"), ("exit", "http")]


async def test_an_eager_factory_is_created_at_start() -> None:
    journal = Journal()
    manager = ResourceManager(
        loaders(db=eager(journal.async_factory("db")), http=journal.async_factory("http"))
    )
    manager.start()
    await until(lambda: manager.states()[0].up)
    assert journal.calls == [("enter", "db")]
    assert [(s.name, s.eager, s.status) for s in manager.states()] == [
        ("db", True, ResourceStatus.UP),
        ("http", False, ResourceStatus.PENDING),
    ]
    await manager.close(5.0)


async def test_a_sync_resource_is_entered_and_exited_in_its_own_thread_not_the_loops() -> None:
    journal = Journal()
    manager = ResourceManager(loaders(pool=journal.sync_factory("pool")))
    view = await manager.acquire(("pool",))
    # A thread job reads the same mapping from a worker thread.
    seen = await asyncio.to_thread(lambda: view["pool"])
    assert seen is view["pool"]
    await manager.close(5.0)
    assert journal.calls == [("enter", "pool"), ("exit", "pool")]
    entered, exited = journal.threads["enter", "pool"], journal.threads["exit", "pool"]
    assert entered.startswith("podcron-resource-pool")
    assert exited == entered, "enter and exit run in the same thread"


async def test_factories_taking_config_get_the_operators_config_source(tmp_path: Path) -> None:
    (tmp_path / "baseUrl").write_text("http://reports.example")
    source = ConfigSource(config_dir=tmp_path)
    source.load()
    given: list[ConfigSource] = []

    @contextlib.asynccontextmanager
    async def client(config: ConfigSource) -> AsyncIterator[str]:
        given.append(config)
        yield config.snapshot().text("baseUrl")

    manager = ResourceManager(loaders(client=client), config=source)
    view = await manager.acquire(("client",))
    assert view["client"] == "http://reports.example"
    assert given == [source]
    await manager.close(5.0)


async def test_a_class_that_is_an_async_context_manager_is_a_factory() -> None:
    class Session:
        closed = False

        async def __aenter__(self) -> Session:
            return self

        async def __aexit__(self, *_: object) -> None:
            self.closed = True

    manager = ResourceManager(loaders(session=Session))
    session = (await manager.acquire(("session",))).typed("session", Session)
    await manager.close(5.0)
    assert session.closed


# -- what runs see --------------------------------------------------------------------


async def test_run_resources_name_what_is_missing_and_check_types() -> None:
    manager = ResourceManager(loaders(http=Journal().async_factory("http")))
    view = await manager.acquire(("http",))
    assert await manager.acquire(()) is NO_RESOURCES
    assert list(view) == ["http"]
    assert len(view) == 1
    assert "http" in view
    assert view.get("db") is None
    with pytest.raises(ResourceNotDeclared) as missing:
        view["db"]
    assert (
        str(missing.value) == "resource 'db' is not in this job's spec.resources (it lists: http)"
    )
    assert isinstance(missing.value, KeyError)
    assert view.typed("http", object) is view["http"]
    with pytest.raises(ResourceTypeMismatch) as mismatch:
        view.typed("http", str)
    assert str(mismatch.value) == "resource 'http' is a builtins.object, not a builtins.str"
    assert repr(view) == "RunResources(['http'])"
    await manager.close(5.0)


async def test_unknown_names_are_refused_with_the_registered_ones() -> None:
    manager = ResourceManager(loaders(http=Journal().async_factory("http")))
    manager.check(["http"])
    with pytest.raises(UnknownResource) as unknown:
        manager.check(["http", "dbx"])
    assert unknown.value.reason == "ResourceNotFound"
    assert str(unknown.value) == (
        "spec.resources: no resource factory named 'dbx' in entry-point group "
        "podcron.resources (registered: http)"
    )
    with pytest.raises(UnknownResource):
        await manager.acquire(("dbx",))


def test_the_example_factory_is_discovered_from_its_entry_point() -> None:
    factories = discover()
    assert "http" in factories
    from podcron_examples.uptime import http_client

    assert factories["http"]() is http_client


# -- failure, backoff, recovery ----------------------------------------------------------


async def test_a_failing_factory_is_retried_with_jittered_capped_backoff_then_recovers(
    clock: LoopClock,
) -> None:
    flaky = Flaky(failures=8)
    journal = Journal()
    heard: list[ResourceState] = []
    manager = ResourceManager(
        loaders(db=flaky, http=journal.async_factory("http")),
        listeners=[heard.append],
        backoff_initial=1.0,
        backoff_cap=8.0,
    )
    with pytest.raises(ResourceUnavailable) as unavailable:
        await manager.acquire(("db",))
    assert unavailable.value.reason == "ResourceUnavailable"
    assert "ConnectionRefusedError: db:5432 refused" in str(unavailable.value)
    assert "next attempt at" in str(unavailable.value)
    delays = []
    for attempt in range(1, 9):
        await clock.until(
            lambda n=attempt: len(flaky.attempts) == n and manager.states()[0].failing  # type: ignore[misc]
        )
        state = manager.states()[0]
        assert state.status is ResourceStatus.FAILED
        assert state.failures == attempt
        assert state.retry_at is not None
        delays.append(state.retry_at - time.time())
        # Meanwhile other resources work, and runs needing this one fail at once.
        assert (await manager.acquire(("http",)))["http"] is not None
        with pytest.raises(ResourceUnavailable):
            await manager.acquire(("db",))
        window = min(8.0, 2.0 ** (attempt - 1))
        clock.advance(window)
    await clock.until(lambda: manager.states()[0].up)
    assert len(flaky.attempts) == 9
    assert (await manager.acquire(("db",)))["db"] == "pool"
    # Each wait lies in [0, min(cap, initial * 2**(n-1))]: full jitter, capped.
    for attempt, delay in enumerate(delays, start=1):
        assert -0.1 <= delay <= min(8.0, 2.0 ** (attempt - 1)) + 0.1, (attempt, delays)
    gaps = [b - a for a, b in zip(flaky.attempts, flaky.attempts[1:], strict=False)]
    assert all(gap <= 8.0 + 0.5 for gap in gaps), gaps
    assert len({round(d, 3) for d in delays}) > 1, "jittered, not a fixed sequence"
    # Listeners heard: creating, each failure, then up; a retry's start is no news.
    statuses = [state.status for state in heard if state.name == "db"]
    assert statuses[0] is ResourceStatus.CREATING
    assert statuses[1:-1] == [ResourceStatus.FAILED] * 8
    assert statuses[-1] is ResourceStatus.UP
    final = manager.states()[0]
    assert (final.failures, final.reason, final.retry_at, final.failing) == (8, None, None, False)
    await manager.close(5.0)
    assert flaky.closed == 1


async def test_a_failure_is_logged_when_its_reason_changes_not_at_every_attempt(
    clock: LoopClock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(failures=4)
    manager = ResourceManager(loaders(db=flaky), backoff_initial=1.0, backoff_cap=1.0)
    with caplog.at_level(logging.INFO, logger="podcron.resources"):
        with pytest.raises(ResourceUnavailable):
            await manager.acquire(("db",))
        for attempt in range(1, 5):
            await clock.until(lambda n=attempt: manager.states()[0].failures == n)  # type: ignore[misc]
            await clock.until(lambda: manager.states()[0].status is ResourceStatus.FAILED)
            clock.advance(1.0)
        await clock.until(lambda: manager.states()[0].up)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "resource db: attempt 1 failed: ConnectionRefusedError: db:5432 refused; retrying in "
    )
    assert lines[1] == "resource db created after 4 failed attempts"
    await manager.close(5.0)


async def test_an_attempt_that_hangs_fails_after_the_create_timeout(clock: LoopClock) -> None:
    entered = threading.Event()

    @contextlib.asynccontextmanager
    async def hangs() -> AsyncIterator[None]:
        entered.set()
        await asyncio.Event().wait()
        yield

    manager = ResourceManager(loaders(db=hangs), create_timeout=30.0)
    waiting = asyncio.create_task(manager.acquire(("db",)))
    await clock.until(entered.is_set)
    assert manager.states()[0].status is ResourceStatus.CREATING
    clock.advance(31.0)
    with pytest.raises(ResourceUnavailable) as unavailable:
        await waiting
    assert "TimeoutError: not created within 30s" in str(unavailable.value)
    await manager.close(1.0)


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        (lambda: 42, "TypeError: the factory returned a builtins.int, not a context manager"),
        (
            # An async def that returns the object instead of yielding it.
            lambda: asyncio.sleep(0, result="pool"),
            "TypeError: the factory is an async def returning a coroutine; decorate it with "
            "@contextlib.asynccontextmanager and yield the resource",
        ),
    ],
    ids=["not-a-context-manager", "coroutine"],
)
async def test_a_factory_that_makes_no_context_manager_fails_with_what_to_write(
    factory: Callable[[], Any], reason: str
) -> None:
    manager = ResourceManager(loaders(db=factory))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(ResourceUnavailable) as unavailable:
            await manager.acquire(("db",))
        gc.collect()
    assert manager.states()[0].reason == reason
    assert reason in str(unavailable.value)
    await manager.close(1.0)


async def test_a_factory_that_cannot_be_imported_is_retried_from_start(clock: LoopClock) -> None:
    def broken() -> Any:
        raise ModuleNotFoundError("No module named 'asyncpg'")

    manager = ResourceManager({"db": broken})
    manager.start()
    await clock.until(lambda: manager.states()[0].failing)
    state = manager.states()[0]
    assert state.reason == "ModuleNotFoundError: No module named 'asyncpg'"
    clock.advance(2.0)
    await clock.until(lambda: manager.states()[0].failures == 2)
    await manager.close(1.0)


async def test_failure_reasons_carry_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "dsn").write_text("postgres://app:s3cr3t-pw@db/app\n")
    source = ConfigSource(secrets_dir=secrets)
    source.load()

    @contextlib.asynccontextmanager
    async def database(config: ConfigSource) -> AsyncIterator[None]:
        dsn = config.snapshot().secret("dsn").reveal().strip()
        raise ConnectionError(f"cannot connect to {dsn}")
        yield

    manager = ResourceManager(loaders(db=database), config=source)
    with caplog.at_level(logging.DEBUG), pytest.raises(ResourceUnavailable) as unavailable:
        await manager.acquire(("db",))
    assert "s3cr3t" not in str(unavailable.value)
    assert "cannot connect to ********" in str(unavailable.value)
    assert manager.states()[0].reason == "ConnectionError: cannot connect to ********"
    assert all("s3cr3t" not in record.getMessage() for record in caplog.records)
    await manager.close(1.0)


async def test_a_run_cancelled_while_waiting_leaves_the_attempt_going() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    attempts: list[None] = []

    @contextlib.asynccontextmanager
    async def slow() -> AsyncIterator[str]:
        attempts.append(None)
        started.set()
        await release.wait()
        yield "pool"

    manager = ResourceManager(loaders(db=slow))
    first = asyncio.create_task(manager.acquire(("db",)))
    await started.wait()
    first.cancel()
    release.set()
    await until(lambda: manager.states()[0].up)
    assert (await manager.acquire(("db",)))["db"] == "pool"
    await manager.close(1.0)
    assert manager.states()[0].failures == 0
    assert len(attempts) == 1, "the first attempt succeeded and was the only one"


RUN = contextvars.ContextVar("RUN", default="none")


async def test_a_resource_made_for_a_run_does_not_inherit_the_runs_context() -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def client() -> AsyncIterator[None]:
        seen.append(RUN.get())
        yield

    manager = ResourceManager(loaders(client=client))
    RUN.set("shop/report")  # as a run's span and log fields are context variables
    await manager.acquire(("client",))
    assert seen == ["none"]
    await manager.close(1.0)


# -- shutdown -------------------------------------------------------------------------


async def test_closed_in_reverse_creation_order_exactly_once() -> None:
    journal = Journal()
    manager = ResourceManager(
        loaders(
            a=journal.async_factory("a"),
            b=journal.sync_factory("b"),
            c=journal.async_factory("c"),
            unused=journal.async_factory("unused"),
        )
    )
    for name in ("b", "c", "a"):
        await manager.acquire((name,))
    await manager.close(5.0)
    await manager.close(5.0)
    assert journal.calls == [
        ("enter", "b"),
        ("enter", "c"),
        ("enter", "a"),
        ("exit", "a"),
        ("exit", "c"),
        ("exit", "b"),
    ]
    statuses = {state.name: state.status for state in manager.states()}
    assert statuses == {
        "a": ResourceStatus.CLOSED,
        "b": ResourceStatus.CLOSED,
        "c": ResourceStatus.CLOSED,
        "unused": ResourceStatus.PENDING,
    }
    with pytest.raises(ResourceUnavailable, match="shutting down"):
        await manager.acquire(("a",))


async def test_a_close_past_the_budget_is_abandoned_and_so_are_those_after_it(
    clock: LoopClock, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal()

    @contextlib.asynccontextmanager
    async def stuck() -> AsyncIterator[str]:
        yield "stuck"
        await asyncio.Event().wait()

    manager = ResourceManager(loaders(first=journal.async_factory("first"), stuck=stuck))
    await manager.acquire(("first",))
    await manager.acquire(("stuck",))
    closing = asyncio.create_task(manager.close(10.0))
    await clock.until(lambda: manager.states()[1].status is ResourceStatus.CLOSING)
    clock.advance(11.0)
    await closing
    statuses = {state.name: (state.status, state.reason) for state in manager.states()}
    budget = "not closed within the shutdown budget (10s)"
    assert statuses == {
        "first": (ResourceStatus.ABANDONED, budget),
        "stuck": (ResourceStatus.ABANDONED, budget),
    }
    assert journal.count("exit", "first") == 0, "no close starts once the budget is spent"


async def test_an_error_on_close_is_reported_and_the_others_still_close() -> None:
    journal = Journal()

    @contextlib.asynccontextmanager
    async def fails_on_close() -> AsyncIterator[str]:
        yield "x"
        raise RuntimeError("flush failed")

    manager = ResourceManager(loaders(first=journal.async_factory("first"), bad=fails_on_close))
    await manager.acquire(("first",))
    await manager.acquire(("bad",))
    await manager.close(5.0)
    states = {state.name: state for state in manager.states()}
    assert states["bad"].status is ResourceStatus.CLOSED
    assert states["bad"].reason == "closed with an error: RuntimeError: flush failed"
    assert journal.count("exit", "first") == 1


async def test_shutdown_during_creation_gives_up_and_tells_the_waiting_run() -> None:
    started = asyncio.Event()

    @contextlib.asynccontextmanager
    async def slow() -> AsyncIterator[None]:
        started.set()
        await asyncio.Event().wait()
        yield

    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    manager = ResourceManager(loaders(db=slow))
    waiting = asyncio.create_task(manager.acquire(("db",)))
    await started.wait()
    await manager.close(1.0)
    with pytest.raises(ResourceUnavailable, match="shutting down"):
        await waiting
    state = manager.states()[0]
    del manager, waiting
    gc.collect()
    assert unhandled == [], "the holder task ends cancelled, with no error left unretrieved"
    assert (state.status, state.reason) == (
        ResourceStatus.CLOSED,
        "never created: the operator shut down",
    )


def test_a_thread_given_up_on_closes_what_it_creates_itself() -> None:
    journal = Journal()
    manager = journal.sync_factory("late")()
    enter = _EnterInThread(manager)
    assert enter.abandon() is False, "nothing was handed over yet"
    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(DEADLINE)
    assert journal.calls == [("enter", "late"), ("exit", "late")]


async def test_readyz_details_show_each_state() -> None:
    manager = ResourceManager(loaders(http=Journal().async_factory("http"), db=Flaky(1)))
    await manager.acquire(("http",))
    with pytest.raises(ResourceUnavailable):
        await manager.acquire(("db",))
    report = manager.report()
    assert report["http"]["status"] == "up"
    assert report["http"]["failures"] == 0
    assert report["db"]["status"] == "failed"
    assert report["db"]["reason"].startswith("ConnectionRefusedError")
    assert report["db"]["nextAttempt"].endswith("Z")
    assert "nextAttempt" not in report["http"]
    assert "reason" not in report["http"]
    await manager.close(1.0)


async def test_readyz_lines_say_what_each_resource_is_doing() -> None:
    @contextlib.asynccontextmanager
    async def up() -> AsyncIterator[str]:
        yield "object"

    @contextlib.asynccontextmanager
    async def down() -> AsyncIterator[str]:
        raise ConnectionRefusedError("refused")
        yield "never"

    manager = ResourceManager(
        {"db": lambda: down, "http": lambda: up, "idle": lambda: up}, backoff_initial=60.0
    )
    await manager.acquire(("http",))
    with pytest.raises(ResourceUnavailable):
        await manager.acquire(("db",))
    lines = manager.readyz_lines()
    assert lines[0].startswith(
        "[-]resource:db failed (1 failed attempt): ConnectionRefusedError: refused; next attempt"
    )
    assert lines[1:] == ["[+]resource:http up", "[-]resource:idle pending"]
    await manager.close(1.0)
