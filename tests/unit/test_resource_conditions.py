"""Ready follows the resources a job lists: refused when unknown, False while one fails.

The reconciler with a real engine and a real resource manager whose factory fails until
the test lets it succeed; the status writer and the Event recorder are stand-ins that
keep what they are given (the real ones are exercised against the API server in
tests/integration/test_resources.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

import kopf
import pytest

from podcron.config import Settings
from podcron.controller.events import EventRecorder, ObjectRef
from podcron.controller.handlers import Reconciler
from podcron.controller.status import StatusWriter
from podcron.engine import Engine
from podcron.resources import ResourceManager, ResourceStatus

from ..waiting import until


class Writer:
    """Keeps the last status of each job."""

    def __init__(self) -> None:
        self.status: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, str] = {}
        self.builds: dict[str, Callable[[], Mapping[str, Any]]] = {}
        #: Whether each job's last update was urgent.
        self.urgent: dict[str, bool] = {}
        #: Jobs with an update on its way (not idle), as a test says.
        self.busy: set[str] = set()

    def update(
        self, namespace: str, name: str, status: Mapping[str, Any], *, urgent: bool = False
    ) -> None:
        self.status.setdefault(name, {}).update(status)
        self.urgent[name] = urgent

    def update_when_sent(
        self, namespace: str, name: str, build: Callable[[], Mapping[str, Any]]
    ) -> None:
        self.builds[name] = build

    def note_version(self, namespace: str, name: str, resource_version: str) -> None:
        self.versions.setdefault(name, resource_version)

    def take_version(self, namespace: str, name: str, resource_version: str) -> None:
        self.versions[name] = resource_version

    def idle(self, namespace: str, name: str) -> bool:
        return name not in self.busy

    def forget(self, namespace: str, name: str) -> None:
        self.status.pop(name, None)


class Events:
    """Keeps every Event posted, as (object name, type, reason, message)."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str, str]] = []

    def post(self, ref: ObjectRef, *, warning: bool, reason: str, message: str) -> None:
        self.posted.append((ref.name, "Warning" if warning else "Normal", reason, message))

    def run_failed(self, ref: ObjectRef, error: str | None) -> None:
        self.post(ref, warning=True, reason="RunFailed", message=error or "")

    def forget(self, ref: ObjectRef) -> None:
        pass


class Database:
    """A factory that refuses to connect until ``up`` is set."""

    up = False

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[str]:
        if not self.up:
            raise ConnectionRefusedError("connect to db:5432 refused")
        yield "pool"


def ready(writer: Writer, name: str) -> dict[str, Any]:
    conditions = writer.status.get(name, {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


def body(name: str, *resources: str) -> kopf.Body:
    raw: dict[str, Any] = {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": "1",
        },
        # A tick the test never reaches: Ready alone is under test.
        "spec": {
            "entryPoint": "hello",
            "schedule": {"every": "9999h"},
            "resources": list(resources),
        },
        "status": {},
    }
    return kopf.Body(cast(kopf.RawBody, raw))


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Reconciler, ResourceManager, Writer, Events, Database]]:
    database = Database()
    manager = ResourceManager(
        {"db": lambda: database, "http": lambda: database}, backoff_initial=0.05, backoff_cap=0.05
    )
    engine = Engine(shutdown_timeout_seconds=1.0, loop_watchdog=False, resources=manager)
    writer, events = Writer(), Events()
    reconciler = Reconciler(
        engine=engine,
        writer=cast(StatusWriter, writer),
        events=cast(EventRecorder, events),
        settings=Settings(),
        resources=manager,
    )
    yield reconciler, manager, writer, events, database
    await engine.shutdown()
    await manager.close(1.0)


async def test_an_unknown_resource_is_refused_with_the_registered_names(
    parts: tuple[Reconciler, ResourceManager, Writer, Events, Database],
) -> None:
    reconciler, _, writer, events, _ = parts
    await reconciler.on_create(body=body("typo", "dbx"))
    condition = ready(writer, "typo")
    assert (condition["status"], condition["reason"]) == ("False", "ResourceNotFound")
    assert condition["message"] == (
        "spec.resources: no resource factory named 'dbx' in entry-point group "
        "podcron.resources (registered: db, http)"
    )
    assert writer.status["typo"]["nextRunTime"] is None
    assert events.posted == [("typo", "Warning", "ResourceNotFound", condition["message"])]


async def test_jobs_listing_a_failing_resource_are_unready_until_it_is_created(
    parts: tuple[Reconciler, ResourceManager, Writer, Events, Database],
) -> None:
    reconciler, manager, writer, events, database = parts
    await reconciler.on_create(body=body("uses-db", "db"))
    await reconciler.on_create(body=body("other"))
    assert ready(writer, "uses-db")["reason"] == "Scheduled"
    with contextlib.suppress(Exception):
        await manager.acquire(("db",))  # a run asks for it: the first attempt fails
    condition = ready(writer, "uses-db")
    assert (condition["status"], condition["reason"]) == ("False", "ResourceUnavailable")
    assert condition["message"] == (
        "resource 'db' is unavailable: ConnectionRefusedError: connect to db:5432 refused; retrying"
    )
    assert ready(writer, "other")["reason"] == "Scheduled"
    # Retries failing the same way are no news: one Warning Event.
    failures = manager.states()[0].failures
    await until(lambda: manager.states()[0].failures >= failures + 3)
    warnings = [e for e in events.posted if e[2] == "ResourceUnavailable"]
    assert warnings == [("uses-db", "Warning", "ResourceUnavailable", condition["message"])]
    # A job reconciled meanwhile starts unready too.
    await reconciler.on_update(body=body("uses-db-too", "db"))
    assert ready(writer, "uses-db-too")["reason"] == "ResourceUnavailable"
    database.up = True
    await until(lambda: manager.states()[0].status is ResourceStatus.UP)
    for name in ("uses-db", "uses-db-too"):
        assert (ready(writer, name)["status"], ready(writer, name)["reason"]) == (
            "True",
            "Scheduled",
        )
    assert events.posted[-1][:3] == ("uses-db-too", "Normal", "Scheduled")
